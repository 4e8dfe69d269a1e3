"""Adapting to a new site, measured: leave-source-out on cxr-dev as the stand-in hospital.

    python bench/adapt.py                       # trains the parent once into --data-dir, then measures
    python bench/adapt.py --draws 3 --ks 5      # quicker

The parent is MobileNetV2 (offline ImageNet weights) with a logistic head, trained by
``training_jobs.train`` on cxr-dev without the sources actualmed and figure1 (patient split seed
0): exactly ``cxr train --holdout-sources actualmed,figure1 --head logistic``. Those 81 films (72
patients; covid 58, normal 21, pneumonia 2) are the new site.

Protocol, per k (labelled films per class present: covid and normal; pneumonia has 2 films):
1. draw k covid and k normal films at random (10 seeds); their patients' films leave the test set;
2. refit the heads with ``training_jobs.adapt`` (penalty and local share chosen by patient-grouped
   cross-validation on the labelled films only), ``mix=original`` and ``local-only``;
3. score the remaining site films: unadapted, adapted original, adapted local-only.
Strategies: the same budget of 2k films chosen label-blind by ``scheduler.sampling.select``
(``random`` over the same seeds, ``uncertain`` and ``diverse`` once), adapted ``mix=original``.

The original training films' features are recomputed from the run's record
(``adapt_job.original_training_features``), as ``cxr adapt`` does. Prints a table and writes JSON.
Research use only, not for clinical decisions.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxr.core.db.migrate import upgrade
from cxr.core.settings import Settings
from modelstore import open_model_store
from modelstore.runtime import ModelRuntime
from scheduler.sampling import select
from training_jobs.adapt import Problem, choose, current_heads, head_probabilities, model_heads
from training_jobs.adapt_job import original_training_features
from training_jobs.datasets import load_dataset
from training_jobs.evaluation import evaluate_predictions, headline_metrics
from training_jobs.train import TrainConfig, train

SHARED = Path(__file__).resolve().parents[2] / "shared"
SITE = ("actualmed", "figure1")
CLASSES = ("covid", "normal", "pneumonia")
PARENT = "lso-parent"
#: A smaller grid than ``cxr adapt``'s default, so 100-odd refits fit on two CPU cores.
PENALTIES = (1e-3, 1e-2, 1e-1)
SHARES = (0.5, 0.9)

log = logging.getLogger("bench.adapt")


def parent_runtime(settings: Settings, data: str, weights: str) -> ModelRuntime:
    store = open_model_store(settings)
    if not store.versions(PARENT):
        train(TrainConfig(data=data, arch="mobilenetv2", classes=CLASSES, name=PARENT, head="logistic",
                          weights=weights, seed=0, holdout_sources=SITE, publish=True, verbose=2),
              settings)  # fmt: skip
    return ModelRuntime.load(store, store.resolve(f"{PARENT}@1"), warm_up=False)


def figures(y: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    m = headline_metrics(y, probs, CLASSES, present_only=True)
    return {"covid_auc": m["covid_auc"], "macro_f1": m["macro_f1"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(data_dir=args.data_dir)
    upgrade(settings=settings)
    runtime = parent_runtime(settings, args.data, args.weights)
    manifest = runtime.manifest
    assert manifest is not None
    cache = args.data_dir / "adapt-features.npz"
    if cache.exists():
        saved = np.load(cache, allow_pickle=False)
        x_orig, y_orig, x_site, y_site = (saved[k] for k in ("x_orig", "y_orig", "x_site", "y_site"))
        groups = [str(g) for g in saved["groups"]]
        parent_probs_keras = saved["parent_probs"]
    else:
        found = original_training_features(settings, manifest, runtime)
        assert not isinstance(found, str), found
        x_orig, y_orig = found
        data = load_dataset(args.data, CLASSES, manifest.input, settings)
        site = np.flatnonzero([s in SITE for s in data.sources])
        x_site, y_site = runtime.features_gray(data.images[site]), data.labels[site]
        groups = [data.patient_ids[i] for i in site]
        parent_probs_keras = runtime.predict_gray(data.images[site])
        np.savez(cache, x_orig=x_orig, y_orig=y_orig, x_site=x_site, y_site=y_site,
                 groups=np.asarray(groups), parent_probs=parent_probs_keras)  # fmt: skip
    slices = model_heads(runtime.model, runtime.feature_layers)
    parent = current_heads(runtime.model, slices)
    parent_probs = head_probabilities(x_site, slices, parent, manifest.output)
    gap = float(np.abs(parent_probs - parent_probs_keras).max())
    log.info("heads from features vs the Keras graph: max |difference| %.2e", gap)
    groups_arr = np.asarray(groups)
    full = evaluate_predictions(y_site, parent_probs, CLASSES, n_resamples=1000, present_only=True)
    out: dict[str, Any] = {
        "parent": manifest.ref, "site": list(SITE), "n_site": len(y_site), "n_original": len(y_orig),
        "site_per_class": {c: int((y_site == i).sum()) for i, c in enumerate(CLASSES)},
        "unadapted_all_site": {k: full[k] for k in ("covid_auc", "macro_f1")} | {"ci95": full["ci95"]},
        "numpy_vs_keras_max_abs_diff": gap, "penalties": args.penalties, "local_shares": args.shares,
        "draws": args.draws, "rows": [], "strategies": [],
    }  # fmt: skip

    def evaluate_arms(labelled: np.ndarray, seed: int, modes: tuple[str, ...]) -> dict[str, Any]:
        patients = set(groups_arr[labelled])
        test = np.flatnonzero([g not in patients for g in groups_arr])
        row: dict[str, Any] = {"n_test": len(test), "test_per_class": np.bincount(y_site[test], minlength=3)
                               .tolist(), "unadapted": figures(y_site[test], parent_probs[test])}  # fmt: skip
        for mix in modes:
            keep = len(y_orig) if mix == "original" else 0
            problem = Problem(x_site[labelled], y_site[labelled], [groups[i] for i in labelled],
                              x_orig[:keep], y_orig[:keep], slices, 3, manifest.output)  # fmt: skip
            try:
                penalty, share, _ = choose(problem, mix, seed, args.penalties, args.shares)  # type: ignore[arg-type]
            except Exception as exc:
                row[mix] = {"error": str(exc)[:200]}
                continue
            heads = problem.fit(penalty, share)
            probs = head_probabilities(x_site[test], slices, heads, manifest.output)
            row[mix] = figures(y_site[test], probs) | {"C": penalty, "local_share": share}
        return row

    covid, normal = np.flatnonzero(y_site == 0), np.flatnonzero(y_site == 1)
    for k in args.ks:
        for draw in range(args.draws):
            rng = np.random.default_rng(1000 * k + draw)
            labelled = np.concatenate(
                [rng.choice(covid, k, replace=False), rng.choice(normal, k, replace=False)]
            )
            started = time.monotonic()
            row = evaluate_arms(labelled, draw, ("original", "local-only"))
            out["rows"].append({"k": k, "draw": draw, **row, "seconds": round(time.monotonic() - started, 1)})
            log.info("k=%d draw %d: %s", k, draw, out["rows"][-1])
        for strategy in ("random", "uncertain", "diverse"):
            for draw in range(args.draws if strategy == "random" else 1):
                picked = np.asarray(select(strategy, 2 * k, parent_probs, seed=draw, features=x_site))
                row = evaluate_arms(picked, draw, ("original", "local-only"))
                row["labelled_per_class"] = np.bincount(y_site[picked], minlength=3).tolist()
                out["strategies"].append({"k": k, "budget": 2 * k, "strategy": strategy, "draw": draw, **row})
                log.info("k=%d %s draw %d: %s", k, strategy, draw, out["strategies"][-1])
    return out


def _stats(values: list[float | None]) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "n/a"
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def table(out: dict[str, Any]) -> str:
    lines = ["| k per class | test films (covid/normal/pneu) | arm | COVID AUC (mean ± SD over draws) | "
             "macro-F1 (mean ± SD) |", "|---|---|---|---|---|"]  # fmt: skip
    for k in sorted({r["k"] for r in out["rows"]}):
        rows = [r for r in out["rows"] if r["k"] == k]
        counts = "/".join(str(c) for c in rows[0]["test_per_class"]) + f" (n={rows[0]['n_test']}, draw 0)"
        for arm in ("unadapted", "original", "local-only"):
            auc = _stats([r[arm].get("covid_auc") for r in rows if arm in r])
            f1 = _stats([r[arm].get("macro_f1") for r in rows if arm in r])
            lines.append(f"| {k} | {counts} | {arm} | {auc} | {f1} |")
    lines += [
        "",
        "| budget (films) | strategy | labelled covid/normal/pneu | unadapted AUC | adapted (original) "
        "COVID AUC | macro-F1 | adapted (local-only) COVID AUC | macro-F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in sorted({r["k"] for r in out["strategies"]}):
        for strategy in ("random", "uncertain", "diverse"):
            rows = [r for r in out["strategies"] if r["k"] == k and r["strategy"] == strategy]
            labelled = "/".join(
                f"{np.mean([r['labelled_per_class'][i] for r in rows]):.1f}" for i in range(3)
            )
            cells = [_stats([r["unadapted"]["covid_auc"] for r in rows])]
            for arm in ("original", "local-only"):
                for key in ("covid_auc", "macro_f1"):
                    cells.append(_stats([r[arm].get(key) for r in rows if "error" not in r[arm]]))
            lines.append(f"| {2 * k} | {strategy} | {labelled} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(SHARED / "data" / "cxr-dev" / "manifest.csv"))
    parser.add_argument("--weights", default=str(SHARED / "weights"))
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/cxr-bench-adapt/data"))
    parser.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[5, 10, 20])
    parser.add_argument("--draws", type=int, default=10)
    floats = lambda s: tuple(float(x) for x in s.split(","))  # noqa: E731
    parser.add_argument("--penalties", type=floats, default=PENALTIES, help="Inverse penalties tried.")
    parser.add_argument("--shares", type=floats, default=SHARES, help="Local shares tried (mix=original).")
    parser.add_argument("--out", type=Path, default=Path("bench/results/adapt-mobilenetv2-lso-s0.json"))
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = run(args)
    args.out.write_text(json.dumps(out, indent=2, default=float))
    text = table(out)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
