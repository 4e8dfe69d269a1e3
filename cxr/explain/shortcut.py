"""The shortcut score: how much of a heatmap's energy lies outside the central chest region.

Burned-in text, laterality markers, rulers and hospital labels sit in the borders and corners
of a radiograph; a model that reads them has learnt the hospital, not the disease.

The central region is the box left after removing a margin of ``CENTRAL_MARGIN`` = 1/8 of the
height from the top and the bottom and 1/8 of the width from the left and the right (it covers
the middle 75 % × 75 % = 56.25 % of the image). Why one eighth: on frontal chest films the lung
fields and the heart span roughly the middle three quarters in both directions, while markers
and text are printed within the outer tenth or so; a wider margin would cut into the apices and
the costophrenic angles, a narrower one would leave corner labels inside. A heatmap spread
evenly over the image therefore scores 1 - 0.5625 = 0.4375; concentrated in the chest it scores
near 0; concentrated in a corner near 1. Limits: see docs/EXPLANATIONS.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from cxr.explain.geometry import Placement, content_map

CENTRAL_MARGIN = 0.125
DEFAULT_ALERT = 0.5  # above this, more than half the evidence lies outside the chest box


def central_box(height: int, width: int, margin: float = CENTRAL_MARGIN) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the central region, bottom/right exclusive."""
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    dy, dx = round(margin * height), round(margin * width)
    return dy, dx, height - dy, width - dx


def shortcut_score(heatmap: np.ndarray, where: Placement, margin: float = CENTRAL_MARGIN) -> float | None:
    """Share in [0, 1] of the heatmap's energy outside the central box of the IMAGE (letterbox
    padding excluded). A map with no energy (no positive evidence for the class) has no
    location: its score is undefined (None) and stays out of every aggregate."""
    content = content_map(heatmap, where)
    return outside_share(content, margin)


def outside_share(image_map: np.ndarray, margin: float = CENTRAL_MARGIN) -> float | None:
    """Share of a map that covers exactly the image, lying outside its central box; None for a
    map with no positive energy."""
    positive = np.maximum(np.asarray(image_map, dtype=np.float64), 0.0)
    total = float(positive.sum())
    if total <= 0.0:
        return None
    top, left, bottom, right = central_box(*positive.shape, margin=margin)
    inside = float(positive[top:bottom, left:right].sum())
    return float(np.clip(1.0 - inside / total, 0.0, 1.0))


def outside_lungs_share(film_map: np.ndarray, lungs: np.ndarray) -> float | None:
    """Share of a map over the whole film lying outside a lung mask (any resolution; it is
    resized to the map). Where a segmenter runs (a model whose contract has a lung step) this is
    the shortcut score instead of the central box: the real lungs, not a guess of where they are.
    None for a map with no positive energy."""
    from PIL import Image

    positive = np.maximum(np.asarray(film_map, dtype=np.float64), 0.0)
    total = float(positive.sum())
    if total <= 0.0:
        return None
    height, width = positive.shape
    mask = Image.fromarray(np.asarray(lungs, dtype=np.uint8) * 255).resize(
        (width, height), Image.Resampling.NEAREST
    )
    inside = float(positive[np.asarray(mask) > 127].sum())
    return float(np.clip(1.0 - inside / total, 0.0, 1.0))


@dataclass(frozen=True)
class ShortcutSummary:
    """Shortcut scores of many images (a job, or a model on an evaluation set)."""

    count: int
    mean: float | None
    median: float | None
    share_above: float | None
    threshold: float

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def summarize_shortcut_scores(scores: Iterable[float], threshold: float = DEFAULT_ALERT) -> ShortcutSummary:
    """Mean, median and the share of images whose score exceeds ``threshold``."""
    values = np.asarray(list(scores), dtype=np.float64)
    if values.size == 0:
        return ShortcutSummary(0, None, None, None, threshold)
    return ShortcutSummary(
        int(values.size), float(values.mean()), float(np.median(values)),
        float((values > threshold).mean()), threshold,
    )  # fmt: skip
