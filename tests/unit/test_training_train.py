"""Training end to end on a small learnable synthetic dataset, through the library and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cxr.core.db.migrate import upgrade
from cxr.core.db.models import Evaluation, TrainingRun
from cxr.core.db.session import session_scope
from cxr.core.settings import reload_settings
from cxr.core.storage import open_store
from tests.services import SHARED_DIR
from tests.unit.synthetic_cxr import write_folder_dataset, write_manifest_dataset
from training_jobs.train import TrainConfig, train

pytestmark = pytest.mark.slow


def test_simple_cnn_learns_blob_position(tmp_path, local_settings):
    # 35 patients per class, a few with two films, so the split really is by patient.
    rows = [(label, f"{label}-{p}") for label in ("covid", "normal") for p in range(35)]
    rows += [(label, f"{label}-{p}") for label in ("covid", "normal") for p in range(5)]
    manifest = write_manifest_dataset(tmp_path / "data", rows, size=48)
    upgrade(settings=local_settings)
    config = TrainConfig(
        data=str(manifest), arch="simple_cnn", classes=("covid", "normal"), name="blob-cnn",
        image_size=48, epochs=15, patience=4, batch_size=16, bootstrap_resamples=100, verbose=0,
    )  # fmt: skip
    result = train(config, local_settings)

    assert result.metrics["accuracy"] >= 0.9, result.metrics
    assert result.metrics["n"] >= 12 and result.model_ref is None
    store = open_store(settings=local_settings)
    names = {info.key.rsplit("/", 1)[1] for info in store.list(f"reports/training/{result.run_id}/")}
    assert {"report.json", "report.md", "training_curves.png", "roc_curves.png", "model.keras"} <= names
    assert "not for clinical decisions" in store.get(f"reports/training/{result.run_id}/report.md").decode()
    page = store.get(f"reports/training/{result.run_id}/report.html").decode()
    assert "not for clinical decisions" in page and "95% CI" in page and "Per source" in page
    assert page.count("data:image/png;base64,") == 4  # training curves, confusion matrix, ROC, reliability
    with session_scope(local_settings) as session:
        run = session.get(TrainingRun, result.run_id)
        assert run.status == "finished" and run.finished_at is not None
        assert run.data_fingerprint == result.runtime["dataset"]["fingerprint"]
        assert run.metrics["training_data"]["per_class"] == {"covid": 40, "normal": 40}  # for model cards
        split = run.split["patients"]
        assert set(split["train"]).isdisjoint(split["test"]) and len(split["test"]) >= 6
        assert not any(h.startswith(("covid-", "normal-")) for h in split["train"])
        evaluation = session.scalars(select(Evaluation).filter_by(training_run_id=run.id)).one()
        assert (
            evaluation.model_version is None and evaluation.metrics["accuracy"] == result.metrics["accuracy"]
        )


def test_cli_train_publish_then_evaluate(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "cxr-data"))
    reload_settings()
    data = write_folder_dataset(
        tmp_path / "folder", per_class=20, size=40, classes=("covid", "normal", "pneumonia")
    )
    held_out = write_folder_dataset(tmp_path / "held-out", per_class=6, size=40, seed=9)
    from cxr.cli.main import cli

    runner = CliRunner()
    args = ["train", "--data", str(data), "--arch", "simple_cnn", "--classes", "covid,non-covid",
            "--image-size", "40", "--epochs", "3", "--name", "tiny", "--batch-size", "16",
            "--publish", "--alias", "candidate", "--json"]  # fmt: skip
    trained = runner.invoke(cli, args, catch_exceptions=False)
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["model"] == "tiny@1" and summary["report"].endswith("report.json")

    evaluated = runner.invoke(
        cli, ["evaluate", "--model", "tiny@latest", "--data", str(held_out), "--json"], catch_exceptions=False
    )
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads(evaluated.stdout)
    assert result["model"] == "tiny@1" and result["n"] == 12

    shown = runner.invoke(cli, ["models", "show", "tiny@candidate", "--json"], catch_exceptions=False)
    manifest = json.loads(shown.stdout)["manifest"]
    assert manifest["classes"] == ["covid", "non-covid"] and manifest["output"] == "sigmoid"
    assert manifest["input"]["channels"] == 1 and manifest["gradcam_layer"] == "conv3"
    datasets = [record["dataset"] for record in manifest["metrics"]]
    assert len(datasets) == 2 and "test split" in datasets[0] and datasets[1] == str(held_out)
    assert manifest["metrics"][1]["values"]["accuracy"] == result["metrics"]["accuracy"]
    assert "ci95" in manifest["metrics"][1]["values"]
    reload_settings()


MOBILENET_WEIGHTS = Path(
    SHARED_DIR / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
)


@pytest.mark.skipif(not MOBILENET_WEIGHTS.exists(), reason="offline ImageNet weights not on this machine")
def test_pretrained_head_then_fine_tune_publishes_a_safe_model(tmp_path, local_settings):
    data = write_folder_dataset(tmp_path / "folder", per_class=12, size=40)
    upgrade(settings=local_settings)
    config = TrainConfig(
        data=str(data), arch="mobilenetv2", classes=("covid", "normal"), name="tiny-mnv2", image_size=32,
        epochs=1, weights=str(MOBILENET_WEIGHTS), fine_tune_layers=8, fine_tune_epochs=1, batch_size=8,
        bootstrap_resamples=20, publish=True, verbose=0,
    )  # fmt: skip
    result = train(config, local_settings)
    assert len(result.history["loss"]) == 2  # one head epoch, one fine-tuning epoch
    from modelstore import open_model_store
    from modelstore.loading import load_keras_model

    pulled = open_model_store(local_settings).pull(result.model_ref)
    assert pulled.manifest.input.normalization == "symmetric" and pulled.manifest.input.channels == 3
    model = load_keras_model(pulled.path)  # safe mode
    assert model.get_layer(pulled.manifest.gradcam_layer) is not None


_DETERMINISTIC_RUN = """
import json, sys
from pathlib import Path
from cxr.core.db.migrate import upgrade
from cxr.core.settings import Settings
from tests.unit.synthetic_cxr import write_folder_dataset
from training_jobs.train import TrainConfig, train

root = Path(sys.argv[1])
data = write_folder_dataset(root / "data", per_class=15, size=40)
settings = Settings(data_dir=root / "cxr-data")
upgrade(settings=settings)
config = TrainConfig(data=str(data), arch="simple_cnn", classes=("covid", "normal"), name="det",
                     image_size=40, epochs=2, batch_size=8, bootstrap_resamples=10, deterministic=True,
                     verbose=0)
print(json.dumps(train(config, settings).history["loss"]))
"""


def test_deterministic_mode_repeats_the_same_losses(tmp_path):
    # Separate processes: op determinism is process-wide and cannot be switched off again.
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    losses = []
    for run in ("a", "b"):
        done = subprocess.run(
            [sys.executable, "-c", _DETERMINISTIC_RUN, str(tmp_path / run)],
            cwd=repo, capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        losses.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert losses[0] == losses[1]


@pytest.mark.skipif(not MOBILENET_WEIGHTS.exists(), reason="offline ImageNet weights not on this machine")
def test_generalisation_levers_train_both_heads(tmp_path, local_settings, caplog):
    """The generalisation levers go through the whole job: the logistic head and fine-tuning both
    train on the weighted, restyled split (covid only from source a, as on cxr-dev), and
    fine-tuning averages its weights."""
    from training_jobs.deshortcut import Deshortcut

    rows = [("covid", f"a:c{p}") for p in range(16)] + [("normal", f"a:n{p}") for p in range(4)]
    rows += [("normal", f"b:n{p}") for p in range(14)]
    manifest = write_manifest_dataset(tmp_path / "data", rows, size=40)
    upgrade(settings=local_settings)
    config = TrainConfig(
        data=str(manifest), arch="mobilenetv2", classes=("covid", "normal"), name="weighted", image_size=32,
        head="logistic", weights=str(MOBILENET_WEIGHTS), fine_tune_layers=4, fine_tune_epochs=1, batch_size=8,
        bootstrap_resamples=10, balance_sources=True, deshortcut=Deshortcut(acquisition=1.0),
        fine_tune_ema=0.9, verbose=0,
    )  # fmt: skip
    with caplog.at_level("INFO", logger="training_jobs.train"):
        result = train(config, local_settings)
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "source-balanced weights: covid/a:" in logged and "normal/b:" in logged
    assert "weights averaged (EMA 0.9)" in logged
    assert len(result.history["loss"]) == 1 and np.isfinite(result.history["loss"][0])
    assert result.metrics["n"] > 0
