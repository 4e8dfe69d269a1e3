"""Where the original image lies inside the model input, so that maps and boxes computed at the
model's resolution can be carried back to ORIGINAL-image pixels.

'stretch' fills the whole input; 'pad' letterboxes: the image is scaled by
``min(W/w, H/h)`` to ``round(w*s) × round(h*s)`` (at least 1) and pasted at
``((W - w')//2, (H - h')//2)``, computed by the same ``letterbox`` function ``preprocess`` uses.

With a lung step (``InputContract.lung_crop``) the model sees only a crop of the film: the
``crop`` box (top, left, bottom, right in film pixels) that preprocessing kept is what is stretched
or letterboxed, and maps and boxes are carried back through it: outside the crop a map is zero.

"Original" here means the decoded film. A hospital-sized film is decoded reduced by an integer
factor (``InputContract.decode_side``, ``DecodedImage.scale``): its decoded pixels times that
factor are the pixels of the film in the archive.
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
    #: The film region preprocessing kept (top, left, bottom, right); None: the whole film.
    crop: tuple[int, int, int, int] | None = None

    @property
    def region(self) -> tuple[int, int, int, int]:
        return self.crop or (0, 0, self.original_height, self.original_width)

    @property
    def scale_y(self) -> float:
        """Original pixels per content pixel, vertically."""
        top, _, bottom, _ = self.region
        return (bottom - top) / self.height

    @property
    def scale_x(self) -> float:
        _, left, _, right = self.region
        return (right - left) / self.width


def placement(
    contract: InputContract,
    original_height: int,
    original_width: int,
    crop: tuple[int, int, int, int] | None = None,
) -> Placement:
    """The placement ``preprocess`` gives an image of this size under ``contract``; ``crop`` is
    the film region the lung step kept (``LungRegion.box``), None for the whole film."""
    if crop == (0, 0, original_height, original_width):
        crop = None
    top_c, left_c, bottom_c, right_c = crop or (0, 0, original_height, original_width)
    if contract.resize == "stretch":
        return Placement(contract.height, contract.width, 0, 0, contract.height, contract.width,
                         original_height, original_width, crop)  # fmt: skip
    top, left, height, width = letterbox(contract.height, contract.width, bottom_c - top_c, right_c - left_c)
    return Placement(
        contract.height, contract.width, top, left, height, width, original_height, original_width, crop
    )


def content_map(heatmap: np.ndarray, where: Placement) -> np.ndarray:
    """A layer-resolution map upsampled to the model input, cropped to the image (no padding)."""
    full = upsample(heatmap, where.input_height, where.input_width)
    return full[where.top : where.top + where.height, where.left : where.left + where.width]


def to_original(heatmap: np.ndarray, where: Placement) -> np.ndarray:
    """A layer-resolution map as an (original_height, original_width) map (zero outside the crop)."""
    if where.crop is None:
        return upsample(content_map(heatmap, where), where.original_height, where.original_width)
    top, left, bottom, right = where.crop
    out = np.zeros((where.original_height, where.original_width), dtype=np.float32)
    out[top:bottom, left:right] = upsample(content_map(heatmap, where), bottom - top, right - left)
    return out


def box_to_original(box: tuple[int, int, int, int], where: Placement) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in content pixels (x1, y1 exclusive) → the same box in original pixels,
    rounded outwards so the box never shrinks, and clipped to the image."""
    x0, y0, x1, y1 = box
    top, left, bottom, right = where.region
    return (
        max(left, left + int(np.floor(x0 * where.scale_x))),
        max(top, top + int(np.floor(y0 * where.scale_y))),
        min(right, left + int(np.ceil(x1 * where.scale_x))),
        min(bottom, top + int(np.ceil(y1 * where.scale_y))),
    )
