"""Where do models look, measured two ways: the central-box shortcut score and the share of
Grad-CAM energy outside the real lungs (the segmenter's mask of each film).

    python bench/lung_shortcut.py --data-dir DIR --models m-none@1,m-box@1,m-mask@1 \\
        --segmenter lungs@production --out bench/results/lung-shortcut.json --overlays /tmp/ov

Both scores are computed on the map carried back to the whole film (``to_original``, through the
lung crop where there is one), so models with and without a lung step are compared on the same
pixels: ``box`` is the share outside the film's central 75 % × 75 % box, ``lungs`` the share
outside the segmenter's mask of the film (films whose mask is refused are left out of it).
Images: the 41 shipped sample films. Research use only.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from cxr.core.imaging import decode_image
from cxr.core.imaging.lungs import mask_problem
from cxr.core.settings import Settings
from cxr.explain.geometry import to_original
from cxr.explain.render import overlay_png
from cxr.explain.shortcut import outside_lungs_share, outside_share, summarize_shortcut_scores
from modelstore import open_model_store
from modelstore.runtime import ModelRuntime
from modelstore.segmenter import LungSegmenter

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "cxr-sample"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--models", required=True, help="comma-separated NAME@VERSION")
    parser.add_argument("--segmenter", default="lungs@production")
    parser.add_argument("--overlays", type=Path, default=None, help="write Grad-CAM overlays of 8 films here")
    parser.add_argument("--out", type=Path, default=Path("bench/results/lung-shortcut.json"))
    args = parser.parse_args(argv)
    store = open_model_store(Settings(data_dir=args.data_dir), catalogue=False)
    segmenter = LungSegmenter.load(store, args.segmenter)
    with (SAMPLES / "manifest.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    films = [
        decode_image((SAMPLES / r["path"]).read_bytes(), max_bytes=1 << 26, max_pixels=60_000_000).pixels
        for r in rows
    ]
    masks = [segmenter.lung_mask(p) for p in films]
    usable = [mask_problem(m) is None for m in masks]
    result = {"segmenter": segmenter.ref, "n": len(films), "masks_used": int(sum(usable)), "models": {}}
    for ref in [m.strip() for m in args.models.split(",") if m.strip()]:
        runtime = ModelRuntime.load(store, ref, warm_up=False)
        explained = runtime.explainer("gradcam").explain(films)
        box, lungs = [], []
        for i, item in enumerate(explained):
            film_map = to_original(item.heatmap, item.placement)
            if (score := outside_share(film_map)) is not None:
                box.append(score)
            if usable[i] and (score := outside_lungs_share(film_map, masks[i])) is not None:
                lungs.append(score)
            if args.overlays and i % 5 == 0:
                args.overlays.mkdir(parents=True, exist_ok=True)
                name = f"{ref.replace('@', '-')}-{Path(rows[i]['path']).stem}.png"
                (args.overlays / name).write_bytes(overlay_png(films[i], film_map))
        result["models"][ref] = {
            "lung_crop": runtime.contract.lung_crop,
            "box": summarize_shortcut_scores(box).to_dict(),
            "lungs": summarize_shortcut_scores(lungs).to_dict(),
        }
        print(ref, json.dumps(result["models"][ref]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
