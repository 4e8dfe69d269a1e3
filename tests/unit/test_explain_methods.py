"""Grad-CAM, Grad-CAM++ and feature maps on models whose evidence lies in one known box."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.core.imaging import InputContract
from cxr.explain.methods import FeatureMaps, GradCAM, GradCAMPlusPlus, make_method
from cxr.explain.scores import ClassScore
from tests.explain_models import CONV_LAYER, explainer_for, region_model, with_blob, xray_like
from tests.models import tiny_cnn

SIZE = 32
BOX = (6, 18, 14, 26)  # top, left, bottom, right in model pixels: upper right of centre
DISTRACTOR = (20, 4, 28, 12)  # an equally bright blob the model cannot see
CONTRACT = InputContract(height=SIZE, width=SIZE, channels=1)
ATOL = 1e-5  # batched vs one-by-one: float32 sums in a different order


@pytest.fixture(scope="module")
def sigmoid_model():
    return region_model(BOX, size=SIZE)


def inside(row: int, col: int, box: tuple[int, int, int, int], slack: int = 1) -> bool:
    top, left, bottom, right = box
    return top - slack <= row < bottom + slack and left - slack <= col < right + slack


@pytest.mark.parametrize("method_cls", [GradCAM, GradCAMPlusPlus])
@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
def test_peak_and_first_roi_lie_in_the_region_the_model_reads(method_cls, output):
    model = region_model(BOX, size=SIZE, output=output)
    image = with_blob(with_blob(xray_like(SIZE, SIZE), BOX), DISTRACTOR)
    explainer = explainer_for(
        method_cls(model, default_layer=CONV_LAYER), classes=["normal", "covid"], contract=CONTRACT
    )
    [item] = explainer.explain([image])
    assert item.label == "covid" and item.explained_class == "covid"
    row, col = np.unravel_index(np.argmax(item.heatmap), item.heatmap.shape)
    assert inside(row, col, BOX)
    top, left, bottom, right = DISTRACTOR
    assert item.heatmap[top:bottom, left:right].max() == 0.0  # the unseen blob gets no credit
    x0, y0, x1, y1 = item.rois[0].box
    assert inside((y0 + y1) // 2, (x0 + x1) // 2, BOX)
    assert (x0, y0, x1, y1) == pytest.approx((BOX[1], BOX[0], BOX[3], BOX[2]), abs=1)
    assert item.rois[0].share > 0.7  # the rest is the blurred rim below the threshold
    assert item.heatmap.min() >= 0.0 and item.heatmap.max() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "feature-maps"])
def test_batched_equals_one_by_one(name):
    model = tiny_cnn(size=SIZE, channels=1, classes=3, seed=3)
    inputs = np.random.default_rng(0).random((5, SIZE, SIZE, 1), dtype=np.float32)
    batched = make_method(name, model, batch_size=16)(ClassScore(), inputs)
    single = [make_method(name, model, batch_size=1)(ClassScore(), inputs[i : i + 1]) for i in range(5)]
    np.testing.assert_allclose(batched.maps, np.concatenate([s.maps for s in single]), atol=ATOL)
    np.testing.assert_array_equal(batched.targets, np.concatenate([s.targets for s in single]))
    # per-sample gradients: different images get different maps (averaging would make them alike)
    assert not np.allclose(batched.maps[0], batched.maps[1], atol=1e-3)


def test_gradients_are_per_sample_not_batch_averaged(sigmoid_model):
    """An image whose box is empty next to one whose box is bright: each keeps its own map."""
    bright = with_blob(xray_like(SIZE, SIZE), BOX)
    black = np.zeros((SIZE, SIZE), np.float32)
    method = GradCAM(sigmoid_model, default_layer=CONV_LAYER)
    both = method(ClassScore(1), np.stack([bright, black])[..., None])
    alone = method(ClassScore(1), bright[None, ..., None])
    np.testing.assert_allclose(both.maps[0], alone.maps[0], atol=ATOL)
    assert not both.maps[1].any()


@pytest.mark.parametrize("method_cls", [GradCAM, GradCAMPlusPlus])
def test_no_positive_evidence_gives_zeros_not_nan(sigmoid_model, method_cls):
    image = with_blob(xray_like(SIZE, SIZE), BOX)
    explainer = explainer_for(
        method_cls(sigmoid_model, default_layer=CONV_LAYER), classes=["normal", "covid"], contract=CONTRACT
    )
    # classes[0] of a sigmoid model is scored by the negative logit: every weight is negative
    [against] = explainer.explain([image], class_name="normal")
    # a black image: every activation is zero
    [black] = explainer.explain([np.zeros((SIZE, SIZE), np.float32)])
    for item in (against, black):
        assert np.isfinite(item.heatmap).all() and not item.heatmap.any()
        assert item.rois == [] and item.shortcut_score is None  # no evidence: undefined, as stored


def test_feature_maps_keep_the_most_active_channels():
    model = tiny_cnn(size=SIZE, channels=1, classes=3)
    inputs = np.random.default_rng(1).random((2, SIZE, SIZE, 1), dtype=np.float32)
    result = FeatureMaps(model, count=3)(ClassScore(), inputs, layer="conv_last")
    assert result.channels.shape == (2, 3, 30, 30) and result.maps.shape == (2, 30, 30)
    import keras

    probe = keras.Model(model.inputs[0], model.get_layer("conv_last").output)
    means = np.asarray(probe(inputs)).mean(axis=(1, 2))
    for i in range(2):
        assert list(result.channel_indices[i]) == list(np.argsort(-means[i], kind="stable")[:3])
    assert result.channels.max() <= 1.0 and result.channels.min() >= 0.0


def test_unknown_layer_class_and_method_are_clear_errors(sigmoid_model):
    explainer = explainer_for(GradCAM(sigmoid_model), classes=["normal", "covid"], contract=CONTRACT)
    image = xray_like(SIZE, SIZE)
    with pytest.raises(ValueError, match="no layer 'nope'"):
        explainer.explain([image], layer="nope")
    with pytest.raises(ValueError, match="unknown class 'flu'"):
        explainer.explain([image], class_name="flu")
    with pytest.raises(ValueError, match="unknown explanation method"):
        make_method("lime", sigmoid_model)


def test_importing_the_library_and_the_cli_loads_no_keras():
    import subprocess
    import sys

    code = (
        "import sys, cxr.cli.main, cxr.explain.explainer, cxr.explain.render, cxr.explain.artifacts; "
        "assert not {'keras', 'tensorflow'} & set(sys.modules), 'keras imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
