"""The logistic head: folded weights reproduce scikit-learn, the penalty is the validation's
choice, and a logistic-head ensemble trains, publishes and loads in safe mode."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cxr.core.db.migrate import upgrade
from cxr.core.errors import ConfigurationError
from cxr.core.storage import open_store
from tests.unit.synthetic_cxr import write_folder_dataset
from training_jobs.linear_probe import PENALTY_GRID, fit_logistic_head
from training_jobs.train import TrainConfig, train


def _features(rng: np.random.Generator, n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Features on wildly different scales and offsets (as pooled CNN activations are), with a
    label that a linear rule on them predicts imperfectly."""
    x = rng.normal(size=(n, 12)) * rng.uniform(0.01, 50, size=12) + rng.uniform(-20, 20, size=12)
    scores = ((x - x.mean(0)) / x.std(0)) @ rng.normal(size=(12, classes)) + rng.normal(size=(n, classes))
    return x.astype(np.float32), scores.argmax(axis=1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("classes", [2, 3])
def test_folded_weights_reproduce_scikit_learn_on_raw_features(classes):
    rng = np.random.default_rng(classes)
    (x_train, y_train), (x_val, y_val) = _features(rng, 300, classes), _features(rng, 100, classes)
    weights = {c: 1.0 + c for c in range(classes)}
    head = fit_logistic_head((x_train, y_train), (x_val, y_val), classes, weights)

    assert head.penalty == min(head.val_log_loss, key=head.val_log_loss.__getitem__)
    assert set(head.val_log_loss) == set(PENALTY_GRID)
    scaler = StandardScaler().fit(x_train)
    reference = LogisticRegression(C=head.penalty, max_iter=5000, class_weight=weights)
    reference.fit(scaler.transform(x_train), y_train)
    expected = reference.predict_proba(scaler.transform(x_val))

    logits = x_val.astype(np.float64) @ head.kernel + head.bias
    if classes == 2:  # one sigmoid unit: P(class 1)
        assert head.kernel.shape == (12, 1)
        positive = 1 / (1 + np.exp(-logits[:, 0]))
        got = np.stack([1 - positive, positive], axis=1)
    else:
        assert head.kernel.shape == (12, 3)
        got = _softmax(logits)
    np.testing.assert_allclose(got, expected, atol=2e-4)


def test_a_class_without_training_images_is_refused():
    rng = np.random.default_rng(0)
    x, y = _features(rng, 60, 2)
    with pytest.raises(ConfigurationError, match="no training images"):
        fit_logistic_head((x, y), (x, y), num_classes=3)


@pytest.mark.slow
def test_logistic_head_ensemble_trains_publishes_and_loads_safely(tmp_path, local_settings):
    """Random-weight members (no download, no ../shared): the machinery, not the accuracy."""
    from modelstore import open_model_store
    from modelstore.loading import load_keras_model

    data = write_folder_dataset(
        tmp_path / "folder", per_class=16, size=40, classes=("covid", "normal", "pneumonia")
    )
    upgrade(settings=local_settings)
    config = TrainConfig(
        data=str(data), arch="mobilenetv2+vgg16", classes=("covid", "normal", "pneumonia"), name="ens",
        image_size=32, head="logistic", batch_size=8, bootstrap_resamples=20, publish=True, verbose=0,
    )  # fmt: skip
    result = train(config, local_settings)

    assert set(result.head_penalties) == {"mobilenetv2_predictions", "vgg16_predictions"}
    assert result.history == {}  # no epoch ran: the heads were fitted, not trained
    names = {i.key.rsplit("/", 1)[1] for i in open_store(settings=local_settings).list("reports/training/")}
    assert "penalty_path.png" in names and "training_curves.png" not in names
    pulled = open_model_store(local_settings).pull(result.model_ref)
    assert pulled.manifest.input.normalization == "unit" and pulled.manifest.gradcam_layer == "out_relu"
    assert pulled.manifest.metrics[0].values["macro_f1"] == result.metrics["macro_f1"]
    model = load_keras_model(pulled.path)  # safe mode: Normalization and Average are plain layers
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    import keras

    members = keras.Model(
        model.inputs, [model.get_layer(f"{m}_predictions").output for m in ("mobilenetv2", "vgg16")]
    )
    np.testing.assert_allclose(
        np.asarray(model(x)), np.mean([np.asarray(o) for o in members(x)], axis=0), atol=1e-6
    )


def test_a_logistic_head_on_a_model_without_pooled_features_is_refused(tmp_path, local_settings):
    upgrade(settings=local_settings)
    config = TrainConfig(data=str(tmp_path / "absent.csv"), arch="simple_cnn", classes=("covid", "normal"),
                         name="no-probe", head="logistic", verbose=0)  # fmt: skip
    with pytest.raises(ConfigurationError, match="pooled features"):
        train(config, local_settings)
