"""The promotion gate both ways: a better model takes the alias, a worse one does not."""

from __future__ import annotations

import json

import pytest

from cxr.core.db.migrate import upgrade
from cxr.core.imaging import InputContract
from modelstore import open_model_store
from scheduler.retraining import decisions, promotion_gate
from tests.models import save_tiny_cnn
from tests.unit.synthetic_cxr import write_folder_dataset
from tests.unit.test_cli_models import run_cxr
from training_jobs.train import TrainConfig, train

pytestmark = pytest.mark.slow

SIZE = 40
CONTRACT = InputContract(height=SIZE, width=SIZE, channels=1, normalization="unit")


def publish_untrained(store, tmp_path, seed: int) -> int:
    path = save_tiny_cnn(tmp_path / f"untrained-{seed}.keras", size=SIZE, channels=1, classes=2, seed=seed)
    manifest = store.publish("gated", path, architecture="untrained", classes=["covid", "normal"],
                             input_contract=CONTRACT, output="sigmoid")  # fmt: skip
    return manifest.version


def test_better_model_promoted_worse_model_not(tmp_path, local_settings):
    settings = local_settings
    upgrade(settings=settings)
    store = open_model_store(settings)
    eval_set = write_folder_dataset(tmp_path / "eval", per_class=12, size=SIZE, seed=5)
    train_set = write_folder_dataset(tmp_path / "train", per_class=30, size=SIZE, seed=1)

    weak = publish_untrained(store, tmp_path, seed=0)
    store.set_alias("gated", "production", weak)

    trained = train(
        TrainConfig(
            data=str(train_set),
            arch="simple_cnn",
            classes=("covid", "normal"),
            name="gated",
            image_size=SIZE,
            epochs=12,
            patience=4,
            batch_size=16,
            bootstrap_resamples=50,
            publish=True,
            verbose=0,
        ),
        settings,
    )
    strong = int(trained.model_ref.rsplit("@", 1)[1])

    up = promotion_gate(settings, "gated", strong, eval_data=str(eval_set), metric="macro_f1")
    assert up.promoted and up.incumbent_version == weak
    assert up.candidate_value > up.incumbent_value
    assert store.resolve("gated@production").version == strong

    worse = publish_untrained(store, tmp_path, seed=3)
    down = promotion_gate(settings, "gated", worse, eval_data=str(eval_set), metric="macro_f1")
    assert not down.promoted and down.incumbent_version == strong
    assert down.candidate_value < down.incumbent_value
    assert "<" in down.reason
    assert store.resolve("gated@production").version == strong  # the alias did not move

    tolerant = promotion_gate(
        settings, "gated", worse, eval_data=str(eval_set), metric="macro_f1", margin=1.0
    )
    assert tolerant.promoted  # a margin of 1.0 accepts anything: the margin is really applied

    recorded = decisions(settings, "gated")
    assert [d["promoted"] for d in recorded] == [True, False, True]
    assert recorded[1]["candidate_value"] == down.candidate_value
    assert recorded[1]["incumbent_value"] == down.incumbent_value

    shown = json.loads(run_cxr("models", "show", "gated", "--json", data_dir=settings.data_dir).stdout)
    assert [d["promoted"] for d in shown["promotion_decisions"]] == [True, False, True]
    text = run_cxr("models", "show", "gated@production", data_dir=settings.data_dir).stdout
    assert "PROMOTED" in text and "kept current" in text
