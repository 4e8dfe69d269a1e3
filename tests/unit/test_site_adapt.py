"""Site adaptation: the refit heads learn a site's own signal; the child records its lineage;
the gate never measures a version on the films it was fitted on."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from cxr.core.db.migrate import upgrade
from cxr.core.errors import ConfigurationError
from cxr.core.imaging import InputContract
from modelstore import open_model_store
from scheduler.retraining import promotion_gate
from tests.models import save_tiny_cnn
from tests.unit.synthetic_cxr import blob_image
from training_jobs.adapt import HeadSlice, Problem, adapt_heads, fit_heads, head_probabilities, sample_weights
from training_jobs.adapt_job import adapt_model
from training_jobs.datasets import load_dataset
from training_jobs.evaluation import binary_auc
from training_jobs.train import TrainConfig, train

D = 12
SLICES = [HeadSlice("pool_a", "dense_a", 0, 6), HeadSlice("pool_b", "dense_b", 6, 12)]  # a 2-member ensemble


def two_sites(n: int, site: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Features of two classes: at site A the class shows in features 0 and 6; at site B it has
    moved to features 1 and 7 (another scanner), and feature 0 carries a site offset."""
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, D))
    signal = 2.0 * (2 * y - 1)
    if site == "a":
        x[:, 0] += signal
        x[:, 6] += signal
    else:
        x[:, 1] += signal
        x[:, 7] += signal
        x[:, 0] += 3.0
    return x, y


def test_adaptation_recovers_a_site_whose_signal_moved():
    rng = np.random.default_rng(0)
    x_a, y_a = two_sites(400, "a", rng)
    parent = fit_heads(x_a, y_a, sample_weights(y_a[:0], y_a, 1.0), SLICES, 2, "sigmoid", 1.0)
    x_local, y_local = two_sites(40, "b", rng)
    x_test, y_test = two_sites(400, "b", rng)
    before = binary_auc(y_test == 1, head_probabilities(x_test, SLICES, parent, "sigmoid")[:, 1])
    groups = [f"p{i // 2}" for i in range(40)]  # two films per patient
    for mix, original in (("original", (x_a, y_a)), ("local-only", (x_a[:0], y_a[:0]))):
        problem = Problem(x_local, y_local, groups, *original, SLICES, 2, "sigmoid")
        result = adapt_heads(problem, parent, ["normal", "covid"], mix=mix, n_resamples=50)
        after = binary_auc(y_test == 1, head_probabilities(x_test, SLICES, result.heads, "sigmoid")[:, 1])
        assert before < 0.65 and after > 0.9, (mix, before, after)
        # cross-validated local figures, the parent on the same films
        assert result.cv_metrics["n"] == result.parent_metrics["n"] == 40
        assert result.cv_metrics["macro_auc"] > result.parent_metrics["macro_auc"] + 0.2
        assert set(result.operating_points) == {"covid"}  # recalibrated on the cross-validated probabilities


def test_folds_never_split_a_patient_and_the_cv_probabilities_come_from_other_patients():
    from training_jobs.adapt import patient_folds

    y = np.asarray([0, 1] * 15)
    groups = [f"p{i // 3}" for i in range(30)]
    for train_part, test_part in patient_folds(y, groups, seed=0):
        assert not {groups[i] for i in train_part} & {groups[i] for i in test_part}
    with pytest.raises(ConfigurationError, match="two labelled patients"):
        patient_folds(np.asarray([0, 0, 1]), ["a", "b", "c"], seed=0)


SIZE = 32
CONTRACT = InputContract(height=SIZE, width=SIZE, channels=1, normalization="unit")


def write_site(root, n_per_class: int, seed: int, labels=("covid", "normal")):
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    path = root / "labels.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "label", "patient_id", "site"])
        for i in range(n_per_class * len(labels)):
            label = labels[i % len(labels)]
            (root / "img" / f"{i}.png").write_bytes(blob_image(label, SIZE, rng))
            writer.writerow([f"img/{i}.png", label, f"st-mary:{i // 2}", "st-mary"])
    return path


def test_child_manifest_records_parent_and_fingerprints(tmp_path, local_settings):
    settings = local_settings
    upgrade(settings=settings)
    store = open_model_store(settings)
    parent_file = save_tiny_cnn(tmp_path / "parent.keras", size=SIZE, channels=1, classes=2, seed=0)
    parent = store.publish(
        "site",
        parent_file,
        architecture="tiny",
        classes=["covid", "normal"],
        input_contract=CONTRACT,
        output="sigmoid",
        training_data_fingerprint="f" * 64,
    )
    local = write_site(tmp_path / "site", 12, seed=1)
    with pytest.raises(ConfigurationError, match="mix original is unavailable: no finished training run"):
        adapt_model("site@1", str(local), "site", settings, mix="original")
    outcome = adapt_model(
        "site@1", str(local), "site", settings, mix="local-only", publish=True, bootstrap_resamples=20
    )
    child = store.manifest("site", 2)
    fingerprint = load_dataset(str(local), ["covid", "normal"], CONTRACT, settings).fingerprint
    assert outcome.published == "site@2" and child.parent_version == parent.version
    assert child.adaptation.parent == "site@1" and child.adaptation.parent_sha256 == parent.sha256
    assert child.adaptation.local_data_fingerprint == fingerprint == outcome.local_fingerprint
    assert child.training_data_fingerprint == "f" * 64 and child.fitted_fingerprints == {
        "f" * 64,
        fingerprint,
    }
    roles = {r.values["role"]: r for r in child.metrics}
    assert set(roles) == {"adapted", "parent"} and all(r.values["cross_validated"] for r in child.metrics)
    assert roles["adapted"].n == roles["parent"].n == 24
    assert child.sha256 != parent.sha256 and child.adaptation.mix == "local-only"


@pytest.mark.slow
def test_a_model_that_memorised_the_site_films_loses_the_gate(tmp_path, local_settings):
    """Trained on the very films the gate is given, a model wins there by memory; the gate must
    not measure it there (no cross-validated figure: undefined, never promoted)."""
    settings = local_settings
    upgrade(settings=settings)
    store = open_model_store(settings)
    local = write_site(tmp_path / "site", 20, seed=2)
    weak = save_tiny_cnn(tmp_path / "weak.keras", size=SIZE, channels=1, classes=2, seed=0)
    store.publish(
        "gated",
        weak,
        architecture="untrained",
        classes=["covid", "normal"],
        input_contract=CONTRACT,
        output="sigmoid",
        aliases=["production"],
    )
    memoriser = train(
        TrainConfig(
            data=str(local),
            arch="simple_cnn",
            classes=("covid", "normal"),
            name="gated",
            image_size=SIZE,
            epochs=15,
            patience=15,
            batch_size=8,
            bootstrap_resamples=20,
            fractions=(0.8, 0.1, 0.1),
            publish=True,
            verbose=0,
            shift_method="none",
        ),
        settings,
    )
    version = int(memoriser.model_ref.rsplit("@", 1)[1])
    from training_jobs.model_eval import evaluate_model

    fitted = evaluate_model(f"gated@{version}", str(local), settings, bootstrap_resamples=10).metrics
    holder = evaluate_model("gated@1", str(local), settings, bootstrap_resamples=10).metrics
    assert fitted["macro_f1"] > holder["macro_f1"] + 0.2  # on the films it was fitted on, it wins

    result = promotion_gate(settings, "gated", version, eval_data=str(local), metric="macro_f1")
    assert not result.promoted and result.candidate_value is None
    assert "no cross-validated figure" in result.reason
    assert store.resolve("gated@production").version == 1


def test_an_adapted_version_is_gated_on_its_cross_validated_figures(tmp_path, local_settings):
    settings = local_settings
    upgrade(settings=settings)
    store = open_model_store(settings)
    parent_file = save_tiny_cnn(tmp_path / "parent.keras", size=SIZE, channels=1, classes=2, seed=0)
    store.publish(
        "site",
        parent_file,
        architecture="tiny",
        classes=["covid", "normal"],
        input_contract=CONTRACT,
        output="sigmoid",
        aliases=["production"],
    )
    local = write_site(tmp_path / "site", 12, seed=3)
    adapt_model(
        "site@1", str(local), "site", settings, mix="local-only", publish=True, bootstrap_resamples=20
    )
    child = store.manifest("site", 2)
    cv = next(r.values for r in child.metrics if r.values["role"] == "adapted")
    result = promotion_gate(settings, "site", 2, eval_data=str(local), metric="macro_auc", margin=1.0)
    assert result.candidate_value == pytest.approx(cv["macro_auc"])
    assert "candidate cross-validated" in result.reason


def test_a_class_with_one_labelled_patient_is_left_out_not_refused():
    rng = np.random.default_rng(4)
    x_a, y_a = two_sites(200, "a", rng)
    x_b, y_b = two_sites(20, "b", rng)
    slices = SLICES[:1]
    x_local, y_local = np.concatenate([x_b, x_b[:1]]), np.concatenate([y_b + 0, [2]])  # one film of class 2
    parent = fit_heads(x_a, y_a, sample_weights(y_a[:0], y_a, 1.0), slices, 3, "softmax", 1.0)
    problem = Problem(x_local, y_local, [f"p{i}" for i in range(21)], x_a, y_a, slices, 3, "softmax")
    result = adapt_heads(problem, parent, ["normal", "covid", "pneumonia"], mix="original", n_resamples=20)
    assert result.cv_metrics["n"] == 20 and result.heads.weights[0][0].shape == (6, 3)
