"""De-shortcut augmentation (training only, off by default): make what lies outside the lungs
useless for predicting the label.

On cxr-dev the source gives the label away, and the source shows in burned-in letters ("L",
"R", "PORTABLE", "AP ERECT"), arrows, rulers, bright rectangles of anonymisation and the borders
of paper figures. Burning such markers into training films of *every* class at random places,
and erasing random border bands, takes their predictive value away (DeGrave et al. 2021).

It works on the gray images a training dataset caches (``preprocess_gray`` output, after the lung
step), so it needs no change to the pixels inference sees. A logistic head is fitted on frozen
features without the tf.data pipeline, so the augmentation is applied as ``copies`` augmented
copies of the training split, seeded: the same run makes the same copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TEXTS = ("L", "R", "D", "PORTABLE", "AP ERECT", "SUPINE", "AP")


@dataclass(frozen=True)
class Deshortcut:
    """How many augmented copies of each training image, and what each copy may get."""

    copies: int = 1
    markers: tuple[int, int] = (1, 3)  # markers per image, inclusive range
    border_band: float = 0.12  # the widest erased border band, as a share of the side
    band_probability: float = 0.5
    #: The chance that a copy is also shown as another site's acquisition would render it
    #: (``restyle``: gamma, blur or edge enhancement, a lower resolution, noise, JPEG); 0: never.
    acquisition: float = 0.0


def _marker(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: np.random.Generator) -> None:
    width, height = size
    value = int(rng.choice([255, 230, 0]))
    x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
    kind = rng.integers(0, 4)
    if kind == 0:
        font = ImageFont.load_default(size=max(6, int(rng.uniform(0.05, 0.12) * height)))
        draw.text((x, y), str(rng.choice(TEXTS)), fill=value, font=font)
    elif kind == 1:  # an arrow
        length = rng.uniform(0.06, 0.15) * width
        angle = rng.uniform(0, 2 * np.pi)
        x1, y1 = x + length * np.cos(angle), y + length * np.sin(angle)
        draw.line((x, y, x1, y1), fill=value, width=max(1, width // 100))
        head = length / 3
        for turn in (2.6, -2.6):
            draw.line((x1, y1, x1 + head * np.cos(angle + turn), y1 + head * np.sin(angle + turn)),
                      fill=value, width=max(1, width // 100))  # fmt: skip
    elif kind == 2:  # a ruler with ticks
        length = int(rng.uniform(0.15, 0.4) * width)
        draw.line((x, y, x + length, y), fill=value, width=1)
        for tick in range(0, length, max(2, length // 10)):
            draw.line((x + tick, y, x + tick, y - max(2, height // 60)), fill=value, width=1)
    else:  # a bright (or dark) rectangle
        w, h = int(rng.uniform(0.05, 0.2) * width), int(rng.uniform(0.03, 0.1) * height)
        draw.rectangle((x, y, x + w, y + h), fill=value)


def burn(gray: np.ndarray, rng: np.random.Generator, config: Deshortcut) -> np.ndarray:
    """One (H, W, 1) [0, 1] image with random markers and, sometimes, an erased border band."""
    image = Image.fromarray((np.clip(gray[..., 0], 0, 1) * 255).astype(np.uint8), mode="L")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(config.markers[0], config.markers[1] + 1))):
        _marker(draw, image.size, rng)
    out = np.asarray(image, dtype=np.float32) / 255.0
    if rng.random() < config.band_probability:
        side = rng.integers(0, 4)
        band = max(1, int(rng.uniform(0.02, config.border_band) * (out.shape[side % 2])))
        fill = float(rng.choice([0.0, 1.0]))
        if side == 0:
            out[:band] = fill
        elif side == 1:
            out[:, :band] = fill
        elif side == 2:
            out[-band:] = fill
        else:
            out[:, -band:] = fill
    return out[..., None]


def restyle(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One (H, W, 1) [0, 1] image as another acquisition chain might have rendered it.

    Sites differ in exposure curves (gamma), in processing (smoothing, or the edge enhancement
    most CR/DR consoles apply), in the resolution a film was stored at, in quantum noise and in
    lossy export. A model that only saw two sources' chains can read the chain as the label; a
    random chain per copy takes that away. Every step is drawn independently, seeded by ``rng``.
    """
    import cv2

    out = np.clip(gray[..., 0], 0.0, 1.0).astype(np.float32)
    height, width = out.shape
    out = out ** np.float32(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    look = rng.integers(0, 3)
    if look == 0:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=float(rng.uniform(0.5, 1.5)))
    elif look == 1:  # unsharp masking, as consoles enhance edges
        soft = cv2.GaussianBlur(out, (0, 0), sigmaX=float(rng.uniform(1.0, 3.0)))
        out = out + np.float32(rng.uniform(0.3, 1.2)) * (out - soft)
    if rng.random() < 0.5:  # stored at a lower resolution, shown at ours
        scale = rng.uniform(0.35, 0.8)
        stored = (max(8, int(width * scale)), max(8, int(height * scale)))
        small = cv2.resize(out, stored, interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        out = out + rng.normal(0.0, rng.uniform(0.005, 0.03), out.shape).astype(np.float32)
    out = np.clip(out, 0.0, 1.0)
    if rng.random() < 0.3:
        quality = int(rng.integers(30, 85))
        ok, encoded = cv2.imencode(".jpg", (out * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
    return out[..., None]


def _copy(image: np.ndarray, rng: np.random.Generator, config: Deshortcut) -> np.ndarray:
    marked = burn(image, rng, config)
    return restyle(marked, rng) if config.acquisition and rng.random() < config.acquisition else marked


def augment_split(
    images: np.ndarray, labels: np.ndarray, config: Deshortcut, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The training split followed by ``config.copies`` marked (and perhaps restyled) copies of it
    (labels repeated)."""
    rng = np.random.default_rng(seed)
    copies = [np.stack([_copy(image, rng, config) for image in images]) for _ in range(config.copies)]
    return np.concatenate([images, *copies]), np.concatenate([labels] * (config.copies + 1))
