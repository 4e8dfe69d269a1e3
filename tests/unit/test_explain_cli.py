"""`cxr explain` from a shell on the embedded defaults, with a model imported into a tmp store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.explain_models import with_blob, xray_like
from tests.models import save_tiny_cnn
from tests.services import SHARED_DIR
from tests.unit.test_cli_models import run_cxr

REAL_DATA = SHARED_DIR / "data" / "cxr-dev"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("explain-cli")
    model = save_tiny_cnn(root / "seed.keras", size=32, channels=3, classes=3)
    run_cxr("models", "import", str(model), "--name", "seed-cnn", "--classes", "covid,normal,pneumonia",
            "--image-size", "32", "--alias", "production", data_dir=root / "data")  # fmt: skip
    return root / "data"


def synthetic_png(path: Path) -> Path:
    pixels = with_blob(xray_like(250, 300), (30, 200, 80, 260))
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(path)
    return path


def real_image() -> list[Path]:
    found = sorted(REAL_DATA.glob("*/*.jpg"))[:1] + sorted(REAL_DATA.glob("*/*.png"))[:1]
    return found[:1]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "feature-maps"])
def test_explain_writes_readable_overlays(tmp_path, data_dir, method):
    images = [synthetic_png(tmp_path / "synthetic.png"), *real_image()]
    out = tmp_path / "out"
    result = run_cxr("explain", *map(str, images), "--model", "seed-cnn@production", "--method", method,
                     "--out", str(out), "--store", "--json", data_dir=data_dir)  # fmt: skip
    report = json.loads(result.stdout)
    assert report["model"] == "seed-cnn@1" and len(report["images"]) == len(images)
    for path, record in zip(images, report["images"], strict=True):
        assert record["label"] in {"covid", "normal", "pneumonia"}
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        score = record["shortcut_score"]  # None: an all-zero map (no evidence) has no location
        assert score is None or 0.0 <= score <= 1.0
        overlay = next(Path(f) for f in record["files"] if f.endswith("overlay.png"))
        width, height = record["image_size"]  # the decoded film's: the model's decode scale
        with Image.open(path) as original, Image.open(overlay) as drawn:
            assert drawn.size == (width, height)
            scale = record["decode_scale"]
            assert abs(width * scale - original.width) < scale
            assert abs(height * scale - original.height) < scale
        for region in record["rois"]:
            x0, y0, x1, y1 = region["box"]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert all(uri.startswith("file://") for uri in record["artifacts"])
        assert (method == "feature-maps") == any(f.endswith("feature_maps.png") for f in record["files"])


def test_explain_prints_a_readable_summary_and_clean_errors(tmp_path, data_dir):
    image = synthetic_png(tmp_path / "x.png")
    text = run_cxr("explain", str(image), "--model", "seed-cnn@1", "--out", str(tmp_path / "o"),
                   data_dir=data_dir).stdout  # fmt: skip
    assert "shortcut score" in text and "gradcam on conv_last" in text
    bad = run_cxr("explain", str(image), "--model", "seed-cnn@1", "--class", "flu", "--out",
                  str(tmp_path / "o"), data_dir=data_dir, check=False)  # fmt: skip
    assert bad.returncode != 0 and "unknown class 'flu'" in bad.stderr and "Traceback" not in bad.stderr
