"""Does test-time augmentation help a published model, on its internal test split and on the
sources it never saw? A lever of the generalisation work (docs/TRAINING.md), measured, not assumed.

    PYTHONPATH=. .venv/bin/python -m bench.tta --data-dir DIR --model NAME@VERSION \
        [--holdout-sources actualmed,figure1] [--seed 0] [--json bench/results/tta.json]

``DIR`` is a data directory that holds the published model (``bench/train_eval.py --data-dir``
keeps its runs there). The films are decoded and preprocessed once, exactly as training did
(``load_dataset`` → the cached gray inputs), split with the model's own seed and held-out sources,
and scored through the model runtime (``predict_gray``) under each view:

- ``identity``: the film as the model sees it today;
- ``hflip``: mirrored left–right;
- ``zoom``: the central 90 % of the input, resized back;
- ``shift``: four 90 % crops at the corners, resized back (averaged);
- ``gamma``: exposure changed by γ = 0.8 and 1.25 (averaged).

Each TTA recipe averages the probabilities of its views. Reported per recipe: COVID AUC and
macro-F1 (over the classes present) on the internal test split and on the held-out sources, and
the paired bootstrap difference of the held-out COVID AUC against ``identity`` with its 95 % CI
(patients resampled together is not needed for a paired image-level comparison of one model).
Research use only, not for clinical decisions.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.train_eval import SHARED
from cxr.core.settings import Settings
from modelstore import open_model_store
from modelstore.runtime import ModelRuntime
from training_jobs.datasets import load_dataset
from training_jobs.evaluation import binary_auc, headline_metrics
from training_jobs.splits import split_holding_out_sources

log = logging.getLogger("bench.tta")

View = Callable[[np.ndarray], np.ndarray]


def _resize_back(crop: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.stack(
        [cv2.resize(c, (size[1], size[0]), interpolation=cv2.INTER_AREA)[..., None] for c in crop]
    )


def crop_view(top: float, left: float, share: float = 0.9) -> View:
    """A crop of ``share`` of each side at the fractional offset (top, left) of the slack, resized back."""

    def view(gray: np.ndarray) -> np.ndarray:
        h, w = gray.shape[1:3]
        ch, cw = round(h * share), round(w * share)
        y, x = round((h - ch) * top), round((w - cw) * left)
        return _resize_back(gray[:, y : y + ch, x : x + cw, 0], (h, w))

    return view


def gamma_view(gamma: float) -> View:
    return lambda gray: np.clip(gray, 0.0, 1.0) ** gamma


VIEWS: dict[str, list[View]] = {
    "identity": [lambda g: g],
    "hflip": [lambda g: g[:, :, ::-1, :]],
    "zoom": [crop_view(0.5, 0.5)],
    "shift": [crop_view(t, left) for t in (0.0, 1.0) for left in (0.0, 1.0)],
    "gamma": [gamma_view(0.8), gamma_view(1.25)],
}
RECIPES: dict[str, tuple[str, ...]] = {
    "identity": ("identity",),
    "identity+hflip": ("identity", "hflip"),
    "identity+zoom": ("identity", "zoom"),
    "identity+shift": ("identity", "shift"),
    "identity+gamma": ("identity", "gamma"),
    "all": ("identity", "hflip", "zoom", "shift", "gamma"),
}


def view_probabilities(runtime: ModelRuntime, gray: np.ndarray, name: str) -> np.ndarray:
    """The mean probabilities over one view family's transforms."""
    parts = [runtime.predict_gray(view(gray).astype(np.float32), 16) for view in VIEWS[name]]
    return np.mean(parts, axis=0)


def paired_auc_difference(
    positive: np.ndarray, base: np.ndarray, other: np.ndarray, n: int = 2000, seed: int = 0
) -> dict[str, float]:
    """AUC(other) − AUC(base) on the same images, with a bootstrap 95 % CI."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        i = rng.integers(0, len(positive), len(positive))
        a, b = binary_auc(positive[i], base[i]), binary_auc(positive[i], other[i])
        if a is not None and b is not None:
            diffs.append(b - a)
    point = (binary_auc(positive, other) or 0.0) - (binary_auc(positive, base) or 0.0)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"difference": round(point, 4), "ci95": [round(float(low), 4), round(float(high), 4)]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(data_dir=args.data_dir)
    store = open_model_store(settings)
    runtime = ModelRuntime.load(store, store.resolve(args.model))
    classes = tuple(runtime.classes)
    data = load_dataset(args.data, classes, runtime.contract, settings, lungs=runtime.lungs)
    holdout = tuple(s for s in args.holdout_sources.split(",") if s)
    split = split_holding_out_sources(data.patient_ids, data.labels, data.sources, holdout, seed=args.seed)
    parts = {"internal_test": split.indices("test"), "held_out": np.asarray(split.holdout)}
    covid = classes.index("covid")
    out: dict[str, Any] = {"model": runtime.ref, "holdout_sources": list(holdout), "seed": args.seed,
                           "n": {k: len(v) for k, v in parts.items()}, "recipes": {}}  # fmt: skip
    for part, index in parts.items():
        gray, y = data.images[index], data.labels[index]
        views = {name: view_probabilities(runtime, gray, name) for name in VIEWS}
        base = views["identity"][:, covid]
        for recipe, names in RECIPES.items():
            probs = np.mean([views[n] for n in names], axis=0)
            m = headline_metrics(y, probs, classes, present_only=True)
            row = {"covid_auc": m["covid_auc"], "macro_f1": m["macro_f1"]}
            if recipe != "identity":
                row["covid_auc_vs_identity"] = paired_auc_difference(y == covid, base, probs[:, covid])
            out["recipes"].setdefault(recipe, {})[part] = row
            log.info("%s %s: %s", part, recipe, row)
    return out


def table(out: dict[str, Any]) -> str:
    lines = [
        "| recipe | internal COVID AUC | internal macro-F1 | LSO COVID AUC | LSO macro-F1 "
        "| LSO Δ AUC [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    for recipe, row in out["recipes"].items():
        i, h = row["internal_test"], row["held_out"]
        delta = h.get("covid_auc_vs_identity")
        d = f"{delta['difference']:+.3f} [{delta['ci95'][0]:+.3f}, {delta['ci95'][1]:+.3f}]" if delta else "—"
        lines.append(f"| {recipe} | {i['covid_auc']:.3f} | {i['macro_f1']:.3f} | {h['covid_auc']:.3f} "
                     f"| {h['macro_f1']:.3f} | {d} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(SHARED / "data" / "cxr-dev" / "manifest.csv"))
    parser.add_argument("--data-dir", type=Path, required=True, help="the data directory holding the model")
    parser.add_argument("--model", required=True, help="NAME@VERSION of the published model")
    parser.add_argument("--holdout-sources", default="actualmed,figure1")
    parser.add_argument("--seed", type=int, default=0, help="the split seed the model was trained with")
    parser.add_argument("--json", type=Path, default=Path("bench/results/tta.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = run(args)
    print(table(out))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
