"""Maps and boxes carried back to ORIGINAL-image pixels, for 'stretch' and 'pad' contracts."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.core.imaging import InputContract, preprocess
from cxr.explain.geometry import placement, to_original
from cxr.explain.maps import relu_normalize, upsample
from cxr.explain.methods import GradCAM, GradCAMPlusPlus
from tests.explain_models import CONV_LAYER, explainer_for, region_model, with_blob, xray_like

SIZE = 32


@pytest.mark.parametrize("shape", [(150, 300), (300, 150), (250, 300), (97, 64)])
def test_pad_placement_matches_preprocess(shape):
    contract = InputContract(height=SIZE, width=SIZE, channels=1, resize="pad")
    model_input = preprocess(np.ones(shape, np.float32), contract)[..., 0]
    rows, cols = np.nonzero(model_input > 0.5)
    where = placement(contract, *shape)
    assert (where.top, where.left) == (rows.min(), cols.min())
    assert (where.height, where.width) == (rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min())


def original_box(model_box, where):
    """(top, left, bottom, right) in model pixels → (x0, y0, x1, y1) in original pixels."""
    top, left, bottom, right = model_box
    return (
        (left - where.left) * where.scale_x, (top - where.top) * where.scale_y,
        (right - where.left) * where.scale_x, (bottom - where.top) * where.scale_y,
    )  # fmt: skip


@pytest.mark.parametrize("method_cls", [GradCAM, GradCAMPlusPlus])
@pytest.mark.parametrize(
    ("resize", "shape", "model_box"),
    [
        ("stretch", (250, 300), (4, 20, 12, 28)),  # a 300×250 image on a 32×32 model
        ("pad", (150, 300), (10, 4, 18, 12)),  # letterboxed: content rows 8..24
        ("pad", (300, 120), (4, 14, 12, 20)),  # pillarboxed: content columns 10..22
    ],
)
def test_roi_boxes_come_back_in_original_pixels(method_cls, resize, shape, model_box):
    contract = InputContract(height=SIZE, width=SIZE, channels=1, resize=resize)
    where = placement(contract, *shape)
    x0, y0, x1, y1 = original_box(model_box, where)
    assert 0 <= x0 < x1 <= shape[1] and 0 <= y0 < y1 <= shape[0]  # the box is inside the image
    image = with_blob(xray_like(*shape), (round(y0), round(x0), round(y1), round(x1)))
    explainer = explainer_for(method_cls(region_model(model_box, size=SIZE), default_layer=CONV_LAYER),
                          classes=["normal", "covid"], contract=contract)  # fmt: skip
    [item] = explainer.explain([image])
    box = item.rois[0].box
    tolerance = 1.5 * max(where.scale_x, where.scale_y)  # one model pixel of blur, plus rounding
    assert box == pytest.approx((x0, y0, x1, y1), abs=tolerance)
    heat = to_original(item.heatmap, where)
    assert heat.shape == shape
    peak_row, peak_col = np.unravel_index(np.argmax(heat), shape)
    assert y0 <= peak_row < y1 and x0 <= peak_col < x1


def test_relu_normalize_is_safe_on_empty_and_negative_maps():
    maps = np.stack([np.zeros((4, 4)), -np.ones((4, 4)), np.arange(16.0).reshape(4, 4) - 8])
    out = relu_normalize(maps)
    assert np.isfinite(out).all()
    assert not out[0].any() and not out[1].any()
    assert out[2].max() == 1.0 and out[2].min() == 0.0


def test_upsample_any_size_and_stacks():
    maps = np.random.default_rng(0).random((3, 7, 5)).astype(np.float32)
    assert upsample(maps, 40, 60).shape == (3, 40, 60)
    assert upsample(maps[0], 7, 5) is not maps[0]
