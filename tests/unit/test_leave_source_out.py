"""Leave-source-out: where each image's source comes from, a held-out source never reaching
training or validation, unknown sources refused, the per-source breakdown, macro F1 over the
classes present, and the figures travelling with the model (run, Evaluation rows, manifest)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cxr.core.db.migrate import upgrade
from cxr.core.db.models import Evaluation, TrainingRun
from cxr.core.db.session import session_scope
from cxr.core.errors import ConfigurationError
from cxr.core.imaging import InputContract
from cxr.core.settings import reload_settings
from tests.unit.synthetic_cxr import write_folder_dataset, write_manifest_dataset
from training_jobs.by_source import UNKNOWN_SOURCE, per_source_metrics
from training_jobs.datasets import describe, entry_source, load_dataset, parse_manifest
from training_jobs.evaluation import evaluate_predictions, headline_metrics
from training_jobs.splits import SPLIT_NAMES, check_holdout_sources, split_holding_out_sources
from training_jobs.train import TrainConfig, holdout_label, train

CLASSES = ["covid", "normal", "pneumonia"]
CONTRACT = InputContract(height=32, width=32, channels=1, normalization="unit")


# ---- where a source comes from ------------------------------------------------------------------
def test_source_is_a_source_or_site_column_else_the_patient_id_prefix():
    assert entry_source("Actualmed:ANON170", {}) == "actualmed"
    assert entry_source("nih:00001280", {"source_repo": "muhammedtalo/COVID-19"}) == "nih"
    assert entry_source("nih:1", {"site": "Hospital-B"}) == "hospital-b"
    assert entry_source("nih:1", {"source": "A", "site": "B"}) == "a"
    assert entry_source("p17", {}) is None  # no prefix, no column: the listing does not say
    assert entry_source(":17", {}) is None and entry_source("x:", {}) is None


def test_manifest_rows_carry_their_source_and_folders_carry_none(tmp_path, local_settings):
    text = "path,label,patient_id,site\na.png,covid,ieee8023:1,\nb.png,normal,p2,Site-7\nc.png,normal,,\n"
    assert [e.source for e in parse_manifest(text)] == ["ieee8023", "site-7", None]
    rows = [("covid", "actualmed:1"), ("normal", "nih:2")]
    manifest = write_manifest_dataset(tmp_path / "m", rows, size=40)
    data = load_dataset(str(manifest), ["covid", "normal"], CONTRACT, local_settings)
    assert data.sources == ["actualmed", "nih"]
    assert describe(data)["per_class_and_source"] == {"covid / actualmed": 1, "normal / nih": 1}
    folder = write_folder_dataset(tmp_path / "f", per_class=2, size=40)
    assert set(load_dataset(str(folder), ["covid", "normal"], CONTRACT, local_settings).sources) == {None}


# ---- the split ----------------------------------------------------------------------------------
def _cohort() -> tuple[list[str], np.ndarray, list[str]]:
    """Four sources, 1-2 films per patient, all three classes in each source."""
    rng = np.random.default_rng(0)
    patients, labels, sources = [], [], []
    for source, n_patients in (("ieee8023", 60), ("nih", 80), ("actualmed", 15), ("figure1", 12)):
        for p in range(n_patients):
            for _ in range(rng.integers(1, 3)):
                patients.append(f"{source}:{p}")
                labels.append(p % 3)
                sources.append(source)
    return patients, np.asarray(labels), sources


def test_held_out_sources_never_reach_train_or_validation():
    patients, labels, sources = _cohort()
    split = split_holding_out_sources(patients, labels, sources, ["figure1", "Actualmed"], seed=3)
    assert split.holdout_sources == ("actualmed", "figure1")
    held = {i for i, s in enumerate(sources) if s in ("actualmed", "figure1")}
    assert set(split.holdout.tolist()) == held
    for name in SPLIT_NAMES:
        assert not held & set(split.indices(name).tolist()), name
        assert {sources[i] for i in split.indices(name)} == {"ieee8023", "nih"}
    every = np.concatenate([split.train, split.val, split.test, split.holdout])
    assert sorted(every.tolist()) == list(range(len(patients)))  # each image exactly once
    assert split.holdout_patients == sorted({patients[i] for i in held})


def test_the_rest_is_the_ordinary_patient_split_of_the_remaining_films():
    patients, labels, sources = _cohort()
    split = split_holding_out_sources(patients, labels, sources, ["actualmed"], seed=1)
    rest = [i for i, s in enumerate(sources) if s != "actualmed"]
    plain = split_holding_out_sources(
        [patients[i] for i in rest], labels[rest], [sources[i] for i in rest], [], seed=1
    )
    for name in SPLIT_NAMES:
        assert split.indices(name).tolist() == [rest[i] for i in plain.indices(name)]
    assert plain.holdout.size == 0 and plain.holdout_sources == ()


def test_a_patient_in_a_held_out_source_is_held_out_whole(caplog):
    patients = ["a:1", "shared", "shared", "b:1", "b:2", "b:3", "b:4", "b:5", "b:6"]
    sources = ["a", "a", "b", "b", "b", "b", "b", "b", "b"]
    split = split_holding_out_sources(patients, np.zeros(9, dtype=int), sources, ["a"])
    assert split.holdout.tolist() == [0, 1]
    trained_or_tested = np.concatenate([split.train, split.val, split.test]).tolist()
    assert 2 not in trained_or_tested and sorted(trained_or_tested) == [3, 4, 5, 6, 7, 8]
    assert "left out of train, validation and test" in caplog.text


def test_split_record_names_held_out_sources_with_hashed_patients(local_settings):
    patients, labels, sources = _cohort()
    record = split_holding_out_sources(patients, labels, sources, ["figure1"]).to_record(local_settings)
    assert record["holdout"]["sources"] == ["figure1"]
    assert record["holdout"]["n_images"] == sources.count("figure1")
    assert not any(h.startswith("figure1:") for h in record["holdout"]["patients"])


def test_unknown_source_is_refused_with_the_known_ones():
    with pytest.raises(ConfigurationError) as caught:
        check_holdout_sources(["nih", "actualmed", None], ["actualmed", "figure-1"])
    assert str(caught.value) == "unknown source(s) figure-1; known sources: actualmed, nih"
    with pytest.raises(ConfigurationError, match="known sources: none"):
        check_holdout_sources([None, None], ["nih"])
    assert check_holdout_sources(["nih"], [" NIH ", ""]) == ("nih",)


# ---- figures ------------------------------------------------------------------------------------
def test_per_source_breakdown_on_a_hand_made_example():
    # Source "a": 2 covid, 2 normal; one covid film called normal. Source "b": 3 normal films, one
    # called covid. One film without a source.
    y_true = np.array([0, 0, 1, 1, 1, 1, 1, 0])
    p_covid = np.array([0.9, 0.4, 0.2, 0.1, 0.3, 0.8, 0.2, 0.7])
    probs = np.stack([p_covid, 1 - p_covid], axis=1)
    sources = ["a", "a", "a", "a", "b", "b", "b", None]
    out = per_source_metrics(y_true, probs, ["covid", "normal"], sources, n_resamples=50)
    assert list(out) == [UNKNOWN_SOURCE, "a", "b"]
    a, b = out["a"], out["b"]
    assert a["n"] == 4 and a["n_per_class"] == {"covid": 2, "normal": 2}
    assert a["accuracy"] == 0.75 and a["covid_sensitivity"] == 0.5 and a["covid_specificity"] == 1.0
    assert a["covid_auc"] == 1.0  # 0.9 and 0.4 both above 0.2 and 0.1
    assert a["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert b["n"] == 3 and b["accuracy"] == pytest.approx(2 / 3)
    assert b["covid_sensitivity"] is None and b["covid_auc"] is None  # no covid films there
    assert b["covid_specificity"] == pytest.approx(2 / 3)
    assert b["macro_f1"] == 0.8 and b["macro_f1_classes"] == ["normal"]  # covid absent: not averaged
    assert b["ci95"]["covid_auc"] is None and len(b["ci95"]["covid_specificity"]) == 2
    assert out[UNKNOWN_SOURCE]["n"] == 1


def test_macro_f1_over_present_classes_ignores_a_predicted_absent_class():
    y_true = np.array([0, 0, 1, 1])  # no pneumonia films
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    assert headline_metrics(y_true, probs, CLASSES)["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    present = headline_metrics(y_true, probs, CLASSES, present_only=True)["macro_f1"]
    assert present == pytest.approx((2 / 3 + 1) / 2)
    full = evaluate_predictions(y_true, probs, CLASSES, n_resamples=20, present_only=True)
    assert full["macro_f1"] == present and full["macro_f1_classes"] == ["covid", "normal"]
    assert "macro_f1_classes" not in evaluate_predictions(y_true, probs, CLASSES, n_resamples=20)


# ---- end to end ---------------------------------------------------------------------------------
def _sourced_manifest(tmp_path):
    rows = [(label, f"{source}:{label}-{p}") for source in ("alpha", "beta") for label in ("covid", "normal")
            for p in range(14)]  # fmt: skip
    rows += [(label, f"gamma:{label}-{p}") for label in ("covid", "normal") for p in range(5)]
    return write_manifest_dataset(tmp_path / "data", rows, size=40)


@pytest.mark.slow
def test_training_records_leave_source_out_figures_with_the_model(tmp_path, local_settings):
    manifest = _sourced_manifest(tmp_path)
    upgrade(settings=local_settings)
    config = TrainConfig(
        data=str(manifest), arch="simple_cnn", classes=("covid", "normal"), name="lso", image_size=40,
        epochs=2, batch_size=16, bootstrap_resamples=20, holdout_sources=("gamma",), publish=True, verbose=0,
    )  # fmt: skip
    result = train(config, local_settings)

    held = result.holdout_metrics
    assert held is not None and held["n"] == 10 and list(held["per_source"]) == ["gamma"]
    assert set(result.metrics["per_source"]) == {"alpha", "beta"}  # gamma is not in the test split
    label = holdout_label(str(manifest), ("gamma",))
    from modelstore import open_model_store

    records = open_model_store(local_settings).manifest("lso", 1).metrics
    assert [r.dataset for r in records][1] == label and "gamma held out" in records[0].dataset
    assert records[1].n == 10 and records[1].values["covid_auc"] == held["covid_auc"]
    with session_scope(local_settings) as session:
        run = session.get(TrainingRun, result.run_id)
        assert run.split["holdout"]["sources"] == ["gamma"] and run.split["holdout"]["n_images"] == 10
        assert run.metrics["leave_source_out"]["dataset"] == label
        rows = session.scalars(select(Evaluation).filter_by(training_run_id=run.id)).all()
        assert sorted(r.n_images for r in rows) == sorted([result.metrics["n"], 10])


@pytest.mark.slow
def test_cli_refuses_an_unknown_source_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "cxr-data"))
    reload_settings()
    manifest = _sourced_manifest(tmp_path)
    from cxr.cli.main import cli

    args = ["train", "--data", str(manifest), "--arch", "simple_cnn", "--classes", "covid,normal",
            "--image-size", "40", "--epochs", "1", "--name", "tiny",
            "--holdout-sources", "gamma,delta"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: unknown source(s) delta; known sources: alpha, beta, gamma"
    reload_settings()
