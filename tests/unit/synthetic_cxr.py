"""Synthetic, learnable "radiographs" for training tests: a bright blob in the left half means
one class, in the right half the other (and, for a third class, a blob in the top middle)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

POSITIONS = {"covid": (0.5, 0.25), "normal": (0.5, 0.75), "pneumonia": (0.2, 0.5)}  # (row, col)


def blob_image(label: str, size: int, rng: np.random.Generator) -> bytes:
    """A PNG: dim noise with one Gaussian blob whose position encodes the label."""
    row, col = POSITIONS[label]
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy = row + rng.uniform(-0.08, 0.08)
    cx = col + rng.uniform(-0.08, 0.08)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.08**2))
    pixels = np.clip(0.2 + 0.1 * rng.random((size, size)) + 0.7 * blob, 0, 1)
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_folder_dataset(
    root: Path, per_class: int, size: int = 48, classes: tuple[str, ...] = ("covid", "normal"), seed: int = 0
) -> Path:
    """``root/<class>/<n>.png``; returns ``root``."""
    rng = np.random.default_rng(seed)
    for label in classes:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (folder / f"{i:03d}.png").write_bytes(blob_image(label, size, rng))
    return root


def write_manifest_dataset(root: Path, rows: list[tuple[str, str]], size: int = 48, seed: int = 0) -> Path:
    """One image per (label, patient_id) row under ``root/images``; returns the manifest path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "label", "patient_id", "view"])
        for i, (label, patient) in enumerate(rows):
            path = f"images/{i:04d}.png"
            (root / path).write_bytes(blob_image(label, size, rng))
            writer.writerow([path, label, patient, "PA"])
    return manifest
