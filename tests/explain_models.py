"""Keras models whose output depends on one known box of the image, and X-ray-like images.

``region_model`` masks the input to a box (a fixed, non-trainable mask), blurs it with a fixed
3×3 conv and reads the mean brightness of the box: the logit is ``GAIN * mean brightness in
the box - OFFSET``, exactly, and nothing outside the box can change it. Everything is set by
hand, so the tests are deterministic and need no training.
"""

from __future__ import annotations

import keras
import numpy as np

GAIN, OFFSET = 8.0, 2.0
CONV_LAYER = "conv_region"


class RegionMask(keras.layers.Layer):
    """Multiplies the input by a fixed (h, w) 0/1 mask."""

    def __init__(self, mask: np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mask = np.asarray(mask, dtype=np.float32)[None, :, :, None]

    def call(self, inputs):
        return inputs * self.mask


def region_model(box: tuple[int, int, int, int], size: int = 32, channels: int = 1, output: str = "sigmoid"):
    """Model input size×size; ``box`` = (top, left, bottom, right) in model-input pixels."""
    top, left, bottom, right = box
    mask = np.zeros((size, size), dtype=np.float32)
    mask[top:bottom, left:right] = 1.0
    area_share = mask.mean()
    inputs = keras.Input((size, size, channels))
    masked = RegionMask(mask)(inputs)
    conv = keras.layers.Conv2D(2, 3, padding="same", activation="relu", use_bias=False, name=CONV_LAYER)
    features = conv(masked)
    kernel = np.zeros((3, 3, channels, 2), dtype=np.float32)
    kernel[..., 0] = 1.0 / (9 * channels)  # a blurred copy of the box
    kernel[..., 1] = 0.5 / (9 * channels)  # the same at half strength: two channels to weigh
    conv.set_weights([kernel])
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    weight = GAIN / area_share / 1.5  # mean over the image → mean over the box, both channels
    if output == "sigmoid":
        head = keras.layers.Dense(1, activation="sigmoid", name="head")
        probabilities = head(pooled)
        head.set_weights([np.full((2, 1), weight, np.float32), np.array([-OFFSET], np.float32)])
    else:
        head = keras.layers.Dense(2, activation="softmax", name="head")
        probabilities = head(pooled)
        head.set_weights(
            [np.array([[-weight, weight]] * 2, np.float32), np.array([OFFSET, -OFFSET], np.float32)]
        )
    return keras.Model(inputs, probabilities)


def xray_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A dark, smooth, noisy background with a brighter 'chest' oval: float32 (H, W) in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    oval = ((y - height / 2) / (0.4 * height)) ** 2 + ((x - width / 2) / (0.35 * width)) ** 2
    image = 0.1 + 0.25 * (oval < 1.0) + 0.03 * rng.standard_normal((height, width))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def with_blob(image: np.ndarray, box: tuple[int, int, int, int], value: float = 0.95) -> np.ndarray:
    """A copy with a bright rectangle at (top, left, bottom, right) in this image's pixels."""
    out = image.copy()
    top, left, bottom, right = box
    out[top:bottom, left:right] = value
    return out


def explainer_for(method, *, classes, contract):
    """An ``Explainer`` for a method built on a model made in code: the model gets a runtime of
    its own (what a published model gets from the store)."""
    from cxr.explain.explainer import Explainer
    from modelstore.runtime import ModelRuntime

    runtime = ModelRuntime(method.model, classes=classes, contract=contract, output=method.output, ref="test")
    return Explainer(runtime, method)
