"""`cxr models ...` from a shell, on the embedded defaults (SQLite + local object store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models import save_lambda_model, save_tiny_cnn

CXR = str(Path(sys.executable).with_name("cxr"))


def run_cxr(*args: str, data_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(CXR_DATA_DIR=str(data_dir), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([CXR, *args], env=env, capture_output=True, text=True, check=check, timeout=120)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_import_then_list_json(tmp_path, suffix):
    model = save_tiny_cnn(tmp_path / f"seed{suffix}", size=32, channels=3, classes=3)
    data = tmp_path / "data"
    out = run_cxr("models", "import", str(model), "--name", "seed-cnn", "--classes",
                  "covid,normal,pneumonia", "--image-size", "32", "--alias", "production", "--json",
                  data_dir=data)  # fmt: skip
    imported = json.loads(out.stdout)
    assert imported["ref"] == "seed-cnn@1"

    listed = json.loads(run_cxr("models", "list", "--json", data_dir=data).stdout)
    assert listed["models"] == [
        {
            "name": "seed-cnn", "versions": [1], "latest": 1, "aliases": {"production": 1},
            "broken_aliases": [], "architecture": "imported", "classes": ["covid", "normal", "pneumonia"],
            "created_at": listed["models"][0]["created_at"],
        }
    ]  # fmt: skip
    shown = json.loads(run_cxr("models", "show", "seed-cnn@production", "--json", data_dir=data).stdout)
    assert shown["manifest"]["input"] == {
        "height": 32, "width": 32, "channels": 3, "normalization": "unit", "resize": "stretch",
        "contrast": "none",
    }  # fmt: skip
    assert shown["resolved"]["sha256"] == imported["sha256"]

    pulled = json.loads(run_cxr("models", "pull", "seed-cnn@1", "--json", data_dir=data).stdout)
    assert Path(pulled["path"]).is_file()


def test_errors_are_one_clean_line(tmp_path):
    data = tmp_path / "data"
    missing = run_cxr("models", "show", "nothing@production", data_dir=data, check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no model 'nothing' in the model store (known: none yet)"
    evil = save_lambda_model(tmp_path / "evil.keras")
    refused = run_cxr("models", "import", str(evil), "--name", "evil", "--classes", "a,b,c",
                      "--image-size", "32", data_dir=data, check=False)  # fmt: skip
    assert refused.returncode == 1
    assert "safe mode" in refused.stderr and "Traceback" not in refused.stderr
    assert json.loads(run_cxr("models", "list", "--json", data_dir=data).stdout) == {
        "models": [],
        "problems": [],
    }
