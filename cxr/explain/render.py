"""Files a person or a dashboard reads: overlay PNG, feature-map grid PNG, heatmap ``.npz``,
ROI JSON. Colormaps come from ``matplotlib.colormaps`` and images are built with Pillow (no
pyplot figures: a figure per image costs tens of milliseconds and a global state)."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
from PIL import Image

from cxr.explain.explainer import ImageExplanation
from cxr.explain.geometry import to_original
from cxr.explain.maps import upsample

OVERLAY_COLORMAP = "jet"
OVERLAY_ALPHA = 0.4
GRID_COLORMAP = "viridis"
GRID_TILE = 64  # pixels per feature-map tile
GRID_GAP = 2


def _colorize(values: np.ndarray, colormap: str) -> np.ndarray:
    """(H, W) in [0, 1] → (H, W, 3) float RGB in [0, 1]."""
    from matplotlib import colormaps

    return colormaps[colormap](np.clip(values, 0.0, 1.0))[..., :3]


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8), mode="RGB").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def overlay_png(
    pixels: np.ndarray, heatmap: np.ndarray, *, colormap: str = OVERLAY_COLORMAP, alpha: float = OVERLAY_ALPHA
) -> bytes:
    """The heatmap alpha-blended over the gray X-ray, at the X-ray's size (H, W).

    ``heatmap`` must already cover exactly the image (see ``geometry.to_original``); a map of
    another size is stretched onto it.
    """
    height, width = pixels.shape
    heat = upsample(heatmap, height, width)
    gray = np.repeat(np.clip(pixels, 0.0, 1.0)[..., None], 3, axis=-1)
    return _png((1.0 - alpha) * gray + alpha * _colorize(heat, colormap))


def feature_grid_png(
    channels: np.ndarray, *, columns: int | None = None, tile: int = GRID_TILE, colormap: str = GRID_COLORMAP
) -> bytes:
    """(k, h, w) maps in [0, 1] as a grid of tiles (6×6 for the default 36 channels)."""
    count = len(channels)
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / columns))
    step = tile + GRID_GAP
    canvas = np.ones((rows * step - GRID_GAP, columns * step - GRID_GAP, 3), dtype=np.float32)
    for index, channel in enumerate(channels):
        row, column = divmod(index, columns)
        tile_rgb = _colorize(upsample(channel, tile, tile), colormap)
        canvas[row * step : row * step + tile, column * step : column * step + tile] = tile_rgb
    return _png(canvas)


def heatmap_npz(heatmap: np.ndarray, **extra: Any) -> bytes:
    """The layer-resolution heatmap (float32) and any extra arrays, ``np.savez_compressed``."""
    buffer = io.BytesIO()
    arrays = {name: np.asarray(value) for name, value in extra.items()}
    np.savez_compressed(buffer, heatmap=np.asarray(heatmap, dtype=np.float32), **arrays)
    return buffer.getvalue()


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode()


def render_files(item: ImageExplanation, pixels: np.ndarray) -> dict[str, bytes]:
    """File name → bytes for one explained image; ``feature_maps.png`` only for feature maps."""
    where = item.placement
    files = {
        "heatmap.npz": heatmap_npz(
            item.heatmap,
            image_size=np.array([where.original_height, where.original_width]),
            content_box=np.array([where.top, where.left, where.height, where.width]),
        ),
        "overlay.png": overlay_png(pixels, to_original(item.heatmap, where)),
        "rois.json": json_bytes(item.summary()),
    }
    if item.channels is not None:
        files["feature_maps.png"] = feature_grid_png(item.channels)
    return files
