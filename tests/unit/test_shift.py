"""The shift score: reference, percentiles, verdict, operating points, and the store's integrity."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.core.errors import ManifestError, ModelIntegrityError
from cxr.core.settings import Settings
from modelstore import open_model_store
from modelstore.manifest import ShiftSpec
from modelstore.shift import ShiftReference, fit_reference, percentiles
from scheduler.shift_verdict import shift_verdict
from tests import worker_support as support
from training_jobs.operating_points import choose_operating_points, operating_point_metrics


def clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training and validation features from one distribution, and far-away points."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(40, 40))
    train = rng.normal(size=(300, 40)) @ mix
    val = rng.normal(size=(100, 40)) @ mix
    far = 4 * rng.normal(size=(30, 40)) @ mix  # the same directions, four times as spread
    return train, val, far


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_points_from_elsewhere_score_higher_and_the_file_round_trips(method):
    train, val, far = clusters()
    reference = fit_reference(train, method=method, components=16)
    val_scores, far_scores = reference.score(val), reference.score(far)
    assert far_scores.min() > np.percentile(val_scores, 99)
    assert (percentiles(far_scores, val_scores) == 100).all()
    assert np.percentile(percentiles(val_scores, val_scores), 50) == pytest.approx(50, abs=2)
    restored = ShiftReference.from_bytes(reference.to_bytes())
    np.testing.assert_allclose(restored.score(far), far_scores)
    assert restored.method == method


def test_a_reference_is_plain_arrays_never_a_pickle():
    reference = fit_reference(clusters()[0])
    data = reference.to_bytes()
    assert b"pickle" not in data.lower() and data[:2] == b"PK"  # an npz: a zip of .npy files
    with pytest.raises(ManifestError, match="not a valid shift reference"):
        ShiftReference.from_bytes(b"not an npz at all")


def test_wrong_feature_width_is_refused():
    reference = fit_reference(clusters()[0])
    with pytest.raises(ManifestError, match=r"expects \(N, 40\) features"):
        reference.score(np.zeros((2, 39)))


def test_the_verdict_fires_on_a_shifted_job_and_not_on_a_familiar_one():
    assert shift_verdict(25, 50, 0.01).shifted
    familiar = shift_verdict(1, 50, 0.01)
    assert not familiar.shifted and familiar.message == ""
    assert shift_verdict(0, 0, 0.01).share is None
    assert "do not apply" in shift_verdict(25, 50, 0.01).message


def test_operating_point_reaches_the_target_sensitivity_on_validation():
    classes = ["covid", "normal"]
    y = np.array([0] * 20 + [1] * 20)
    covid = np.r_[np.linspace(0.3, 0.99, 20), np.linspace(0.01, 0.6, 20)]
    probs = np.stack([covid, 1 - covid], axis=1)
    [(name, point)] = choose_operating_points(y, probs, classes, {"covid": 0.95, "absent": 0.9}).items()
    assert name == "covid" and point.validation_sensitivity >= 0.95
    assert point.threshold == pytest.approx(np.sort(covid[:20])[::-1][18])  # the 19th of 20 positives
    figures = operating_point_metrics(y, probs, classes, {"covid": point})
    assert figures["covid_sensitivity_at_op"] == point.validation_sensitivity
    assert figures["covid_specificity_at_op"] == point.validation_specificity


def test_a_tampered_reference_is_refused_on_pull_like_a_tampered_model(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    store = open_model_store(settings, catalogue=False)
    reference = fit_reference(clusters()[0])
    spec = ShiftSpec(sha256="0" * 64, size_bytes=0, method="mahalanobis", feature_layers=["pool"],
                     validation_scores=[1.0, 2.0], n_train=300)  # fmt: skip
    manifest = store.publish(
        "shifted", support.build_model(tmp_path / "m.keras"), architecture="tiny", classes=support.CLASSES,
        input_contract=support.CONTRACT, output="softmax", shift=(spec, reference.to_bytes()),
    )  # fmt: skip
    assert manifest.shift.sha256 != "0" * 64 and manifest.shift.size_bytes > 0
    assert store.pull("shifted@1").shift_path.read_bytes() == reference.to_bytes()

    other = fit_reference(clusters(seed=1)[0]).to_bytes()
    store.storage.put("models/shifted/1/shift_reference.npz", other)
    fresh = open_model_store(
        settings.model_copy(update={"model_cache_dir": tmp_path / "cache2"}), catalogue=False
    )
    with pytest.raises(ModelIntegrityError, match="shift reference of shifted@1 has sha256"):
        fresh.pull("shifted@1")
