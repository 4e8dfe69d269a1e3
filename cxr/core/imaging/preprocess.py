"""The one preprocessing function: a decoded radiograph → the model's input tensor.

Training (``training_jobs``) and inference (``worker``) both call ``preprocess``; the only input
besides the pixels is the model's ``InputContract``, read from its manifest.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from PIL import Image

from cxr.core.errors import ImageError
from cxr.core.imaging.contract import InputContract
from cxr.core.imaging.lungs import LungMasker, LungRegion, apply_lung_region, lung_region

_IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def letterbox(
    height: int, width: int, original_height: int, original_width: int
) -> tuple[int, int, int, int]:
    """Where 'pad' puts an image inside a height×width input: (top, left, content_h, content_w).

    Explanations use the same function to carry maps and boxes back to original pixels.
    """
    scale = min(width / original_width, height / original_height)
    content_w, content_h = max(1, round(original_width * scale)), max(1, round(original_height * scale))
    return (height - content_h) // 2, (width - content_w) // 2, content_h, content_w


def resize_gray(pixels: np.ndarray, height: int, width: int, mode: str = "stretch") -> np.ndarray:
    """Resize a float [0, 1] gray image; Pillow's filter antialiases when shrinking."""
    source = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F")
    if mode == "stretch":
        return np.asarray(source.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    top, left, content_h, content_w = letterbox(height, width, source.height, source.width)
    inner = source.resize((content_w, content_h), Image.Resampling.BILINEAR)
    canvas = Image.new("F", (width, height), 0.0)
    canvas.paste(inner, (left, top))
    return np.asarray(canvas, dtype=np.float32)


CLAHE_TILES = (8, 8)
CLAHE_CLIP_LIMIT = 2.0


def clahe(gray: np.ndarray) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a float [0, 1] image, at 16 bits.

    OpenCV's implementation: about 0.2 ms at 224×224, where scikit-image's takes 6 ms, which
    would cost a CPU worker more than decoding does.
    """
    import cv2

    equaliser = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILES)
    levels = np.round(gray * 65535.0).astype(np.uint16)
    return equaliser.apply(levels).astype(np.float32) / 65535.0


def preprocess(pixels: np.ndarray, contract: InputContract, lungs: LungMasker | None = None) -> np.ndarray:
    """float32 (H, W) in [0, 1] → float32 (contract.height, contract.width, contract.channels).

    ``lungs`` is the contract's segmenter (``contract.lung_model``), needed only when the contract
    has a lung step; the model runtime holds it and passes it here."""
    return finish(preprocess_gray(pixels, contract, lungs), contract)


def preprocess_gray(
    pixels: np.ndarray, contract: InputContract, lungs: LungMasker | None = None
) -> np.ndarray:
    """The first half of ``preprocess``: checked, lung step, resized, contrast step;
    (height, width, 1) in [0, 1]. A training dataset caches this (a third of the memory of
    three channels, and the space augmentation works in); ``finish`` turns it into the model's
    input."""
    return preprocess_gray_region(pixels, contract, lungs)[0]


def preprocess_gray_region(
    pixels: np.ndarray, contract: InputContract, lungs: LungMasker | None = None
) -> tuple[np.ndarray, LungRegion | None]:
    """``preprocess_gray`` and where the lung step took the pixels from (None without a lung
    step): explanations carry heatmaps back to the film through that box."""
    if pixels.ndim != 2:
        raise ImageError(f"preprocess expects a 2-D gray image, got shape {pixels.shape}")
    if pixels.dtype != np.float32:
        raise ImageError(f"preprocess expects float32 pixels, got {pixels.dtype}")
    if pixels.size == 0:
        raise ImageError(f"preprocess expects a non-empty image, got shape {pixels.shape}")
    low, high = float(pixels.min()), float(pixels.max())
    if not (low >= -1e-6 and high <= 1 + 1e-6):  # written so that NaN (which compares False) fails
        raise ImageError(f"preprocess expects values in [0, 1], got [{low:.4g}, {high:.4g}]")

    region = None
    if contract.lung_crop != "none":
        if lungs is None:
            raise ImageError(
                f"this model's input contract crops to the lungs ({contract.lung_crop}) with "
                f"{contract.lung_model.ref if contract.lung_model else 'a segmenter'}, which was not given"
            )
        region = lung_region(pixels, lungs, contract.lung_margin)
        pixels = apply_lung_region(pixels, region, blank=contract.lung_crop == "mask")
    gray = np.clip(resize_gray(pixels, contract.height, contract.width, contract.resize), 0.0, 1.0)
    if contract.contrast == "clahe":
        gray = clahe(gray)
    return gray[..., None], region


def finish(gray: np.ndarray, contract: InputContract) -> np.ndarray:
    """The second half of ``preprocess``: (..., 1) gray in [0, 1] → the contract's channels
    (the gray value replicated) and value range. Works on one image or a batch."""
    image = np.repeat(gray, 3, axis=-1) if contract.channels == 3 else gray
    return normalize(image, contract).astype(np.float32, copy=False)


def normalization_affine(contract: InputContract) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per channel such that the model's input is ``(x - mean) / std`` for x in [0, 1].

    Every normalization is affine; stating it once as (mean, std) lets ``normalize`` (NumPy and
    the tf.data training pipeline) and an in-model Keras ``Normalization`` layer (the members of
    an ensemble, which each expect their own range) compute exactly the same map. The arrays are
    read-only: they are computed once per (normalization, channels) and shared.
    """
    return _affine(contract.normalization, contract.channels)


@functools.cache
def _affine(normalization: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    match normalization:
        case "unit":
            mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
        case "symmetric":
            mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.5, np.float32)
        case "raw255":
            mean, std = np.zeros(3, np.float32), np.full(3, 1 / 255.0, np.float32)
        case "torch":
            mean, std = _IMAGENET_MEAN_RGB, _IMAGENET_STD_RGB
        case "caffe":  # channels are BGR, but a replicated gray image is the same in any order
            mean, std = _CAFFE_MEAN_BGR / 255.0, np.full(3, 1 / 255.0, np.float32)
        case _:  # pragma: no cover - the contract's Literal refuses anything else
            raise ImageError(f"unknown normalization {normalization!r}")
    if channels == 1:
        mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
    mean, std = mean.astype(np.float32), std.astype(np.float32)  # copies, never the module constants
    mean.flags.writeable = std.flags.writeable = False
    return mean, std


def normalize(image: Any, contract: InputContract) -> Any:
    """Map [0, 1] values onto the range the model expects (see ``Normalization``).

    ``image`` is a NumPy array or, in the training pipeline, a tensor. NumPy broadcasts a
    3-vector over the last axis about ten times slower than a scalar (an inner loop of length
    3), which would cost a worker more than decoding: a map that is the same on every channel is
    applied as scalars, and a per-channel one channel by channel.
    """
    if contract.normalization == "unit":
        return image
    mean, std = normalization_affine(contract)
    if np.all(mean == mean[0]) and np.all(std == std[0]):
        return (image - mean[0]) / std[0]
    if not isinstance(image, np.ndarray):
        return (image - mean) / std
    out = np.empty(image.shape, dtype=np.result_type(image.dtype, np.float32))
    for channel, (m, s) in enumerate(zip(mean, std, strict=True)):
        np.subtract(image[..., channel], m, out=out[..., channel])
        out[..., channel] /= s
    return out
