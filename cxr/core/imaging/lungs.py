"""The lung step of preprocessing: crop a film to its lung fields, optionally blank the rest.

On public COVID sets the borders of a film (burned-in letters, "PORTABLE" stamps, rulers, the
crop of a paper figure) predict the source, and the source predicts the label; a classifier that
only sees the lungs cannot use them. The lung mask comes from a segmenter (a model of the store,
``modelstore.segmenter``) handed to ``preprocess``; this module is the model-free half: what a
usable mask looks like, and what is done with it.

A segmenter trained on one collection can fail on another (a pediatric film, a lateral view, a
photographed screen). A mask that does not look like two lungs in the middle of the film is
*bad*, and the step then falls back to the whole image: a film is never cropped to a wrong
region, and every fallback is logged and counted (``fallback_counts``).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

#: Limits of a plausible lung mask, as shares of the segmenter's input (a frontal film's two lung
#: fields cover roughly 20-45 % of it; the annotated masks of cxr-dev span 12-55 %).
MIN_AREA, MAX_AREA = 0.08, 0.65
#: The two largest components must hold this share of the mask (the rest is specks) ...
MIN_TWO_SHARE = 0.85
#: ... and the smaller lung must be at least this fraction of the larger one.
MIN_LUNG_RATIO = 0.2
#: The mask's centroid must lie this close to the film's centre (share of width / height).
MAX_CENTROID_OFFSET_X, MAX_CENTROID_OFFSET_Y = 0.15, 0.2


class LungMasker(Protocol):
    """What preprocessing needs of a segmenter: a boolean lung mask of a film at the
    segmenter's own resolution (any size; the step maps it back onto the film)."""

    def lung_mask(self, pixels: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class LungRegion:
    """Where the lung step took a film's pixels from: ``box`` = (top, left, bottom, right) in
    original pixels (bottom/right exclusive), the whole film on a fallback; ``mask`` (the
    two lungs, at the segmenter's resolution over the whole film) is None on a fallback."""

    box: tuple[int, int, int, int]
    mask: np.ndarray | None
    fallback: str | None = None  # why the mask was refused, None when it was used


_fallbacks: Counter[str] = Counter()
_lock = threading.Lock()


#: ``mask_problem``'s message → the reason code a fallback is counted under (a metric label).
FALLBACK_REASONS = {
    "area": "area",
    "one component": "one_component",
    "not two main": "not_two_lungs",
    "centroid": "centroid",
    "both components": "one_side",
}


def fallback_reason(problem: str | None) -> str:
    """The reason code of a refused mask ("used" when it was not refused)."""
    if problem is None:
        return "used"
    return next((code for start, code in FALLBACK_REASONS.items() if problem.startswith(start)), "other")


def fallback_counts() -> dict[str, int]:
    """Lung masks handled in this process so far: "used", or the fallback's reason code
    (``FALLBACK_REASONS``). The worker exports the growth per chunk as ``cxr_lung_masks_total``."""
    with _lock:
        return dict(_fallbacks)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components (8-connected): the label image and each component's area
    (index 0 is the background)."""
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels, stats[:, cv2.CC_STAT_AREA].astype(np.int64) if count else np.zeros(1, np.int64)


def two_lungs(mask: np.ndarray) -> np.ndarray:
    """The mask reduced to its two largest components (specks and stray blobs dropped)."""
    labels, areas = _components(mask)
    if len(areas) <= 1:
        return np.zeros(mask.shape, dtype=bool)
    keep = 1 + np.argsort(areas[1:])[::-1][:2]
    return np.isin(labels, keep)


def mask_problem(mask: np.ndarray) -> str | None:
    """Why a lung mask is bad (then the whole image is used), or None when it looks like two
    lungs: area share within [MIN_AREA, MAX_AREA], two main components holding most of it with
    the smaller at least MIN_LUNG_RATIO of the larger and one on each side of the centre, and
    a centroid near the film's centre."""
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    area = float(mask.mean())
    if not MIN_AREA <= area <= MAX_AREA:
        return f"area {area:.2f} outside [{MIN_AREA}, {MAX_AREA}]"
    labels, areas = _components(mask)
    lungs = np.sort(areas[1:])[::-1]
    if len(lungs) < 2:
        return "one component, not two lungs"
    if (lungs[0] + lungs[1]) / lungs.sum() < MIN_TWO_SHARE or lungs[1] / lungs[0] < MIN_LUNG_RATIO:
        return "not two main components"
    ys, xs = np.nonzero(mask)
    dx, dy = abs(xs.mean() / width - 0.5), abs(ys.mean() / height - 0.5)
    if dx > MAX_CENTROID_OFFSET_X or dy > MAX_CENTROID_OFFSET_Y:
        return f"centroid off-centre by ({dx:.2f}, {dy:.2f})"
    largest = 1 + np.argsort(areas[1:])[::-1][:2]
    centres = [np.nonzero(labels == k)[1].mean() / width for k in largest]
    if (centres[0] - 0.5) * (centres[1] - 0.5) > 0:
        return "both components on one side"
    return None


def lung_region(pixels: np.ndarray, masker: LungMasker, margin: float, where: str = "") -> LungRegion:
    """The lungs' bounding box (grown by ``margin`` of the film's height and width on each
    side) in original pixels and the cleaned mask, or the whole film when the mask is bad."""
    height, width = pixels.shape
    mask = np.asarray(masker.lung_mask(pixels), dtype=bool)
    problem = mask_problem(mask)
    with _lock:
        _fallbacks[fallback_reason(problem)] += 1
    if problem is not None:
        log.warning(
            "lung mask refused%s (%s): using the whole image", f" for {where}" if where else "", problem
        )
        return LungRegion((0, 0, height, width), None, problem)
    lungs = two_lungs(mask)
    ys, xs = np.nonzero(lungs)
    mh, mw = lungs.shape
    top = max(0, int(np.floor((ys.min() / mh - margin) * height)))
    bottom = min(height, int(np.ceil(((ys.max() + 1) / mh + margin) * height)))
    left = max(0, int(np.floor((xs.min() / mw - margin) * width)))
    right = min(width, int(np.ceil(((xs.max() + 1) / mw + margin) * width)))
    return LungRegion((top, left, bottom, right), lungs)


def apply_lung_region(pixels: np.ndarray, region: LungRegion, blank: bool) -> np.ndarray:
    """The film cropped to ``region.box``; with ``blank`` (and a usable mask) also zero outside
    the lungs (the mask grown by two of its pixels, so the pleura stays in)."""
    top, left, bottom, right = region.box
    out = pixels[top:bottom, left:right]
    if not blank or region.mask is None:
        return np.ascontiguousarray(out)
    import cv2
    from PIL import Image

    grown = cv2.dilate(region.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(np.float32)
    height, width = pixels.shape
    full = np.asarray(
        Image.fromarray(grown, mode="F").resize((width, height), Image.Resampling.BILINEAR), np.float32
    )
    return np.ascontiguousarray(out * (full[top:bottom, left:right] >= 0.5))
