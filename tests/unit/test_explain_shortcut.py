"""The shortcut score: evidence in the borders/corners vs in the central chest box."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.core.imaging import InputContract
from cxr.explain.methods import GradCAM, GradCAMPlusPlus
from cxr.explain.shortcut import central_box, outside_share, summarize_shortcut_scores
from tests.explain_models import CONV_LAYER, explainer_for, region_model, with_blob, xray_like

SIZE = 32
CONTRACT = InputContract(height=SIZE, width=SIZE, channels=1)


def score_for(box, method_cls) -> float:
    image = with_blob(xray_like(SIZE, SIZE), box)
    explainer = explainer_for(method_cls(region_model(box, size=SIZE), default_layer=CONV_LAYER),
                          classes=["normal", "covid"], contract=CONTRACT)  # fmt: skip
    return explainer.explain([image])[0].shortcut_score


@pytest.mark.parametrize("method_cls", [GradCAM, GradCAMPlusPlus])
@pytest.mark.parametrize("corner", [(0, 0, 4, 4), (0, 28, 4, 32), (28, 0, 32, 4), (28, 28, 32, 32)])
def test_corner_evidence_scores_high(method_cls, corner):
    assert score_for(corner, method_cls) > 0.7


@pytest.mark.parametrize("method_cls", [GradCAM, GradCAMPlusPlus])
def test_central_evidence_scores_low(method_cls):
    assert score_for((12, 12, 20, 20), method_cls) < 0.3


def test_central_box_and_reference_values():
    assert central_box(32, 32) == (4, 4, 28, 28)
    assert central_box(800, 1000) == (100, 125, 700, 875)
    assert outside_share(np.ones((32, 32))) == pytest.approx(1 - 0.75 * 0.75)
    assert outside_share(np.zeros((32, 32))) is None  # no energy, no location
    with pytest.raises(ValueError, match="margin"):
        central_box(10, 10, margin=0.5)


def test_summary_of_a_job():
    summary = summarize_shortcut_scores([0.1, 0.2, 0.9, 0.6], threshold=0.5)
    assert summary.to_dict() == pytest.approx(
        {"count": 4, "mean": 0.45, "median": 0.4, "share_above": 0.5, "threshold": 0.5}
    )
    assert summarize_shortcut_scores([]).count == 0
