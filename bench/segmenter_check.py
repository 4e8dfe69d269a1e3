"""Check a published lung segmenter where it has no masks: fallbacks per source, overlays, cost.

    python bench/segmenter_check.py --data-dir DIR --segmenter lungs@production \\
        --overlays /tmp/lung-overlays --out bench/results/segmenter-check.json

The masks it was trained on are ieee8023 covid films only; this runs it on every cxr-dev film,
grouped by source and class (NIH normal and pneumonia, Actualmed, Figure1 and ieee8023
non-covid never had a mask; ieee8023/covid holds its own train, val and test films), counts what
``cxr.core.imaging.lungs.mask_problem`` refuses (the whole image is then used), writes overlays
(mask in red, crop box in green) of a few films per group, and times its forward pass against
MobileNetV2 224's (the same batch of 8, best of 10).
Research use only.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxr.core.imaging import decode_image
from cxr.core.imaging.lungs import apply_lung_region, lung_region
from cxr.core.settings import Settings
from modelstore import open_model_store
from modelstore.segmenter import LungSegmenter

SHARED = Path(__file__).resolve().parents[2] / "shared"


def overlay(pixels: np.ndarray, mask: np.ndarray | None, box: tuple[int, int, int, int]) -> Image.Image:
    rgb = np.repeat((pixels * 255).astype(np.uint8)[..., None], 3, axis=-1)
    if mask is not None:
        full = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(pixels.shape[::-1])) > 127
        rgb[full, 0] = np.maximum(rgb[full, 0], 200)
    top, left, bottom, right = box
    rgb[top : top + 2, left:right, 1] = rgb[bottom - 2 : bottom, left:right, 1] = 255
    rgb[top:bottom, left : left + 2, 1] = rgb[top:bottom, right - 2 : right, 1] = 255
    return Image.fromarray(rgb)


def cost_ratio(segmenter: LungSegmenter) -> dict[str, float]:
    import keras

    from modelstore.runtime import compile_forward

    base = keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), include_top=False, weights=None, pooling="avg"
    )
    mobile = compile_forward(base, (224, 224, 3))
    x_seg = np.random.rand(8, *segmenter.contract.shape).astype(np.float32)
    x_mob = np.random.rand(8, 224, 224, 3).astype(np.float32)
    best = {"segmenter": 1e9, "mobilenetv2": 1e9}
    for forward, x in ((segmenter.forward, x_seg), (mobile, x_mob)):
        forward(x)
    for _ in range(10):
        for forward, x, key in ((segmenter.forward, x_seg, "segmenter"), (mobile, x_mob, "mobilenetv2")):
            started = time.perf_counter()
            forward(x)
            best[key] = min(best[key], (time.perf_counter() - started) / 8)
    return {"segmenter_ms": best["segmenter"] * 1e3, "mobilenetv2_ms": best["mobilenetv2"] * 1e3,
            "ratio": best["segmenter"] / best["mobilenetv2"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cxr-dev")
    parser.add_argument("--data-dir", type=Path, required=True, help="CXR_DATA_DIR holding the model store")
    parser.add_argument("--segmenter", default="lungs@production")
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--per-group", type=int, default=3, help="overlays per (source, class)")
    parser.add_argument("--overlays", type=Path, default=Path("/tmp/lung-overlays"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/segmenter-check.json"))
    args = parser.parse_args(argv)
    settings = Settings(data_dir=args.data_dir)
    segmenter = LungSegmenter.load(open_model_store(settings, catalogue=False), args.segmenter)
    args.overlays.mkdir(parents=True, exist_ok=True)
    with (args.data / "manifest.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    areas: dict[str, list[float]] = defaultdict(list)
    written: Counter[str] = Counter()
    for row in rows:
        group = f"{row['patient_id'].split(':')[0]}/{row['label']}"
        pixels = decode_image(
            (args.data / row["path"]).read_bytes(), max_bytes=1 << 26, max_pixels=60_000_000
        ).pixels
        region = lung_region(pixels, segmenter, args.margin, where=row["path"])
        counts[group][region.fallback.split(" ")[0] if region.fallback else "used"] += 1
        counts[group]["n"] += 1
        top, left, bottom, right = region.box
        areas[group].append((bottom - top) * (right - left) / pixels.size)
        kind = "fallback" if region.fallback else "used"
        if written[group + kind] < args.per_group:
            written[group + kind] += 1
            stem = f"{group.replace('/', '-')}-{kind}-{written[group + kind]}"
            overlay(pixels, region.mask, region.box).save(args.overlays / f"{stem}.png")
            crop = apply_lung_region(pixels, region, blank=True)
            Image.fromarray((crop * 255).astype(np.uint8)).save(args.overlays / f"{stem}-mask.png")
    result: dict[str, Any] = {
        "segmenter": segmenter.ref,
        "margin": args.margin,
        "groups": {
            g: dict(c)
            | {
                "fallback_rate": round(1 - c["used"] / c["n"], 3),
                "mean_box_share": round(float(np.mean(areas[g])), 3),
            }
            for g, c in sorted(counts.items())
        },
        "cost": cost_ratio(segmenter),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for group, values in result["groups"].items():
        print(f"{group:22s} n={values['n']:4d} fallback {values['fallback_rate']:.3f}  {values}")
    print("cost", result["cost"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
