"""Regions of interest: boxes around the hottest connected regions of a heatmap.

Found on the map at the model-input resolution, cropped to the image (so letterbox padding
never yields a box), then carried to original-image pixels. Each region reports its share of
the map's total energy (the sum of its values over the whole image), and regions are sorted by
that share, largest first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from cxr.explain.geometry import Placement, box_to_original, content_map

DEFAULT_THRESHOLD = 0.5  # of the map's maximum (maps are normalised to [0, 1])
DEFAULT_MAX_REGIONS = 5


@dataclass(frozen=True)
class Region:
    """A box (x0, y0, x1, y1) in original pixels, x1/y1 exclusive, and its energy share."""

    box: tuple[int, int, int, int]
    share: float
    peak: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def regions_of_interest(
    heatmap: np.ndarray,
    where: Placement,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    max_regions: int = DEFAULT_MAX_REGIONS,
) -> list[Region]:
    """Up to ``max_regions`` connected regions where the map is ≥ ``threshold`` (8-connected)."""
    content = content_map(heatmap, where)
    total = float(content.sum())
    if total <= 0.0:
        return []
    labels, count = ndimage.label(content >= threshold, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    energy = ndimage.sum_labels(content, labels, index)
    peaks = ndimage.maximum(content, labels, index)
    slices = ndimage.find_objects(labels)
    regions = [
        Region(
            box_to_original((cols.start, rows.start, cols.stop, rows.stop), where),
            round(float(e) / total, 6),
            round(float(p), 6),
        )
        for (rows, cols), e, p in zip(slices, energy, peaks, strict=True)
    ]
    regions.sort(key=lambda region: region.share, reverse=True)
    return regions[:max_regions]
