"""How well the shift score tells a new hospital's films, and non-radiographs, from familiar ones.

    .venv/bin/python -m bench.shift [--arch mobilenetv2] [--holdout-sources actualmed,figure1]
                                    [--subsets 1000] [--json bench/results/shift.json]

Trains the recipe on cxr-dev with the held-out sources left out (the leave-source-out protocol),
publishes it with its shift reference into a scratch store, then scores through the model
runtime, as a worker would:

- the internal test split (films of the training sources the model never saw),
- the held-out sources' films (a stand-in for a new hospital),
- non-radiographs: photographs shipped with matplotlib, the CT and MR slices shipped with
  pydicom, a page of text, uniform images: files a user could really drop in a folder.

Reports the AUROC of the per-image score (internal test vs held-out, internal test vs
non-radiographs) for both measures (Mahalanobis and k-NN, refitted on the same features), the
share flagged at the threshold, the job-level verdict on the held-out films and its false-alarm
rate over random subsets of 50 internal test films, and the cost of the score on the forward
pass (score vs predict_proba, batches of 8, one run).
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.train_eval import SHARED, weights_for
from cxr.core.db.migrate import upgrade
from cxr.core.imaging import decode_image
from cxr.core.imaging.preprocess import preprocess_gray
from cxr.core.settings import Settings
from modelstore import open_model_store
from modelstore.runtime import ModelRuntime
from modelstore.shift import fit_reference, percentiles
from scheduler.shift_verdict import shift_verdict
from training_jobs.datasets import load_dataset
from training_jobs.evaluation import binary_auc
from training_jobs.splits import split_holding_out_sources
from training_jobs.train import TrainConfig, train

CLASSES = ("covid", "normal", "pneumonia")


def non_radiograph_files() -> dict[str, bytes]:
    """Files that are obviously not chest X-rays, from packages already installed (matplotlib's
    sample photographs, pydicom's CT and MR test slices), a page of text and uniform images."""
    import matplotlib.cbook as cbook
    from PIL import Image, ImageDraw
    from pydicom.data import get_testdata_file

    sample = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).parent
    files = {
        name: (sample / name).read_bytes() for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
    }
    for name in ("CT_small.dcm", "MR_small.dcm"):
        path = get_testdata_file(name, download=False)  # in pydicom's wheel: never a download
        if path:
            files[name] = Path(path).read_bytes()

    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    page = Image.new("L", (600, 800), 255)
    draw = ImageDraw.Draw(page)
    for line in range(30):
        draw.text(
            (20, 20 + 25 * line),
            f"Discharge summary, line {line}: patient stable, no acute findings.",
            fill=0,
        )
    files["text-page.png"] = png(page)
    for level in (25, 128, 230):
        files[f"uniform-{level}.png"] = png(Image.new("L", (512, 512), level))
    return files


def non_radiographs() -> dict[str, np.ndarray]:
    """``non_radiograph_files`` decoded (a file our decoder refuses is no case here)."""
    out = {}
    for name, data in non_radiograph_files().items():
        try:
            out[name] = decode_image(data, max_bytes=1 << 26, max_pixels=10**8).pixels
        except Exception:
            continue
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED / "data" / "cxr-dev" / "manifest.csv"))
    parser.add_argument("--weights-dir", type=Path, default=SHARED / "weights")
    parser.add_argument("--arch", default="mobilenetv2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--holdout-sources", default="actualmed,figure1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subsets", type=int, default=1000, help="random 50-film internal jobs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    holdout = tuple(s.strip() for s in args.holdout_sources.split(",") if s.strip())

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        upgrade(settings=settings)
        started = time.perf_counter()
        config = TrainConfig(
            data=args.data, arch=args.arch, classes=CLASSES, name="shift-bench", image_size=args.image_size,
            weights=weights_for(args.arch, args.weights_dir), head="logistic", holdout_sources=holdout,
            seed=args.seed, publish=True, bootstrap_resamples=200, verbose=0,
        )  # fmt: skip
        result = train(config, settings)
        train_minutes = (time.perf_counter() - started) / 60
        store = open_model_store(settings)
        runtime = ModelRuntime.load(store, store.resolve(result.model_ref))
        spec, reference = runtime.shift

        data = load_dataset(args.data, CLASSES, runtime.contract, settings, seed=args.seed)
        split = split_holding_out_sources(
            data.patient_ids, data.labels, data.sources, holdout, seed=args.seed
        )
        features = {
            part: runtime.features_gray(data.images[split.indices(part)], 16)
            for part in ("train", "val", "test")
        }
        features["holdout"] = runtime.features_gray(data.images[split.holdout], 16)
        others = non_radiographs()
        features["non-radiograph"] = runtime.features_gray(
            np.stack([preprocess_gray(p, runtime.contract) for p in others.values()]), 16
        )

        measures: dict[str, Any] = {}
        for method in ("mahalanobis", "knn"):
            ref = reference if method == spec.method else fit_reference(features["train"], method=method)
            val = ref.score(features["val"])
            scores = {part: ref.score(f) for part, f in features.items() if part not in ("train", "val")}
            ranks = {part: percentiles(s, val) for part, s in scores.items()}
            flagged = {part: float((r > spec.threshold_percentile).mean()) for part, r in ranks.items()}

            def auroc(outside: str, scores: dict[str, np.ndarray] = scores) -> float | None:
                both = np.concatenate([scores["test"], scores[outside]])
                return binary_auc(np.r_[np.zeros(len(scores["test"])), np.ones(len(scores[outside]))], both)

            expected = max(1 - spec.threshold_percentile / 100, 1 / (len(val) + 1))
            rng = np.random.default_rng(args.seed)
            test_flags = ranks["test"] > spec.threshold_percentile
            draws = [rng.choice(len(test_flags), 50, replace=False) for _ in range(args.subsets)]
            alarms = [
                shift_verdict(int(test_flags[d].sum()), 50, expected, scores["test"][d], val).shifted
                for d in draws
            ]
            holdout_flags = ranks["holdout"] > spec.threshold_percentile
            verdict = shift_verdict(
                int(holdout_flags.sum()), len(holdout_flags), expected, scores["holdout"], val
            )
            internal = shift_verdict(int(test_flags.sum()), len(test_flags), expected, scores["test"], val)
            measures[method] = {
                "auroc_test_vs_holdout": auroc("holdout"),
                "auroc_test_vs_non_radiograph": auroc("non-radiograph"),
                "flagged_share": flagged,
                "non_radiographs_flagged": int((ranks["non-radiograph"] > spec.threshold_percentile).sum()),
                "non_radiographs": len(others),
                "holdout_verdict": verdict.to_dict(),
                "internal_test_verdict": internal.to_dict(),
                "false_alarm_rate_50_internal": float(np.mean(alarms)),
            }

        batch = np.stack([runtime.preprocess(p) for p in list(others.values())[:8]])
        timings = {}
        for name, call in (("predict_proba", runtime.predict_proba), ("score", runtime.score)):
            call(batch)
            t0 = time.perf_counter()
            for _ in range(20):
                call(batch)
            timings[name] = (time.perf_counter() - t0) / 20
    report = {
        "arch": args.arch, "holdout_sources": list(holdout), "seed": args.seed,
        "threshold_percentile": spec.threshold_percentile, "shipped_method": spec.method,
        "n": {part: len(f) for part, f in features.items()}, "train_minutes": round(train_minutes, 2),
        "measures": measures, "non_radiograph_files": sorted(others),
        "seconds_per_batch_of_8": timings,
        "score_over_predict_throughput": timings["predict_proba"] / timings["score"],
        "model_metrics": {k: result.metrics.get(k) for k in ("covid_auc", "macro_f1")},
        "holdout_metrics": {k: (result.holdout_metrics or {}).get(k) for k in ("covid_auc", "macro_f1")},
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
