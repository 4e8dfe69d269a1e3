"""Where the original image lies inside the model input, so that maps and boxes computed at the
model's resolution can be carried back to ORIGINAL-image pixels.

'stretch' fills the whole input; 'pad' letterboxes: the image is scaled by
``min(W/w, H/h)`` to ``round(w*s) × round(h*s)`` (at least 1) and pasted at
``((W - w')//2, (H - h')//2)``, computed by the same ``letterbox`` function ``preprocess`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr.core.imaging import InputContract
from cxr.core.imaging.preprocess import letterbox
from cxr.explain.maps import upsample


@dataclass(frozen=True)
class Placement:
    """The original image's box (top, left, height, width) inside the model input."""

    input_height: int
    input_width: int
    top: int
    left: int
    height: int
    width: int
    original_height: int
    original_width: int

    @property
    def scale_y(self) -> float:
        """Original pixels per content pixel, vertically."""
        return self.original_height / self.height

    @property
    def scale_x(self) -> float:
        return self.original_width / self.width


def placement(contract: InputContract, original_height: int, original_width: int) -> Placement:
    """The placement ``preprocess`` gives an image of this size under ``contract``."""
    if contract.resize == "stretch":
        return Placement(contract.height, contract.width, 0, 0, contract.height, contract.width,
                         original_height, original_width)  # fmt: skip
    top, left, height, width = letterbox(contract.height, contract.width, original_height, original_width)
    return Placement(
        contract.height, contract.width, top, left, height, width, original_height, original_width
    )


def content_map(heatmap: np.ndarray, where: Placement) -> np.ndarray:
    """A layer-resolution map upsampled to the model input, cropped to the image (no padding)."""
    full = upsample(heatmap, where.input_height, where.input_width)
    return full[where.top : where.top + where.height, where.left : where.left + where.width]


def to_original(heatmap: np.ndarray, where: Placement) -> np.ndarray:
    """A layer-resolution map as an (original_height, original_width) map."""
    return upsample(content_map(heatmap, where), where.original_height, where.original_width)


def box_to_original(box: tuple[int, int, int, int], where: Placement) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in content pixels (x1, y1 exclusive) → the same box in original pixels,
    rounded outwards so the box never shrinks, and clipped to the image."""
    x0, y0, x1, y1 = box
    return (
        max(0, int(np.floor(x0 * where.scale_x))),
        max(0, int(np.floor(y0 * where.scale_y))),
        min(where.original_width, int(np.ceil(x1 * where.scale_x))),
        min(where.original_height, int(np.ceil(y1 * where.scale_y))),
    )
