"""Pure array helpers shared by every method: ReLU + safe normalisation, and upsampling."""

from __future__ import annotations

import numpy as np
from PIL import Image


def relu_normalize(maps: np.ndarray) -> np.ndarray:
    """ReLU, then scale each map (the trailing two axes) by its own maximum into [0, 1].

    A map with no positive value (all zero or negative: the class has no positive evidence in
    this layer) becomes all zeros, never NaN.
    """
    positive = np.maximum(np.asarray(maps, dtype=np.float32), 0.0)
    peak = positive.max(axis=(-2, -1), keepdims=True)
    safe = np.where(peak > 0, peak, 1.0)
    return np.where(peak > 0, positive / safe, 0.0).astype(np.float32)


def upsample(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of one (h, w) map, or a stack (..., h, w), to (height, width)."""
    array = np.asarray(heatmap, dtype=np.float32)
    if array.ndim > 2:
        flat = array.reshape(-1, *array.shape[-2:])
        return np.stack([upsample(m, height, width) for m in flat]).reshape(*array.shape[:-2], height, width)
    if array.shape == (height, width):
        return array.copy()
    image = Image.fromarray(np.ascontiguousarray(array), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
