"""Train and evaluate each architecture on cxr-dev, three-class and binary, within a time budget.

    python bench/train_eval.py                                   # the full benchmark (hours on CPU)
    python bench/train_eval.py --archs simple_cnn --epochs 1 --image-size 64 --limit 120   # smoke

Every run uses the same patient-level split (70/10/20, seed 0 unless --seed) through
``training_jobs.train.train``, exactly as ``cxr train`` does, in a scratch data directory (its own
SQLite and object store) unless --data-dir says otherwise. ImageNet weights are taken from
--weights-dir for the architectures that have a file there; the others train from scratch.
Prints a table and writes JSON. Research use only, not for clinical decisions.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cxr.core.db.migrate import upgrade
from cxr.core.settings import Settings
from training_jobs.architectures import ARCHITECTURES
from training_jobs.train import TrainConfig, train

#: ``../shared`` beside the checkout: the dev data and the offline ImageNet weights.
SHARED = Path(__file__).resolve().parents[2] / "shared"

MODES = {"3class": ("covid", "normal", "pneumonia"), "binary": ("covid", "non-covid")}
WEIGHT_FILES = {
    "mobilenetv2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
}
COLUMNS = ("arch", "mode", "weights", "params", "train_min", "macro_f1", "covid_sens", "covid_spec",
           "covid_auc", "macro_auc")  # fmt: skip


def weights_for(arch: str, weights_dir: Path | None) -> str:
    if weights_dir is None or arch not in WEIGHT_FILES:
        return "none"
    path = weights_dir / WEIGHT_FILES[arch]
    return str(path) if path.is_file() else "none"


def run_one(arch: str, mode: str, args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    weights = weights_for(arch, args.weights_dir)
    config = TrainConfig(
        data=args.data, arch=arch, classes=MODES[mode], name=f"bench-{arch.replace('_', '-')}-{mode}",
        image_size=args.image_size, epochs=args.epochs, weights=weights,
        fine_tune_layers=args.fine_tune_layers if weights != "none" else 0, batch_size=args.batch_size,
        fine_tune_epochs=args.fine_tune_epochs, fine_tune_learning_rate=args.fine_tune_learning_rate,
        label_smoothing=args.label_smoothing, contrast=args.contrast,
        seed=args.seed, limit=args.limit, bootstrap_resamples=args.bootstrap, verbose=2,
        publish=True,  # into the run's scratch store, so that `cxr explain`/`cxr score` can use it
    )  # fmt: skip
    result = train(config, settings)
    m = result.metrics
    return {
        "arch": arch,
        "mode": mode,
        "weights": "imagenet-file" if weights != "none" else "none",
        "params": result.parameters,
        "train_min": round(result.train_seconds / 60, 2),
        "macro_f1": m["macro_f1"],
        "covid_sens": m.get("covid_sensitivity"),
        "covid_spec": m.get("covid_specificity"),
        "covid_auc": m.get("covid_auc"),
        "macro_auc": m["macro_auc"],
        "accuracy": m["accuracy"],
        "n_test": m["n"],
        "ci95": m["ci95"],
        "report": result.report_uri,
        "run_id": result.run_id,
        "model": result.model_ref,
    }


def _cell(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(SHARED / "data" / "cxr-dev" / "manifest.csv"))
    parser.add_argument("--archs", default=",".join(ARCHITECTURES), help="comma-separated")
    parser.add_argument("--modes", default="3class,binary", help="3class and/or binary")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fine-tune-layers", type=int, default=0)
    parser.add_argument("--fine-tune-epochs", type=int, default=10)
    parser.add_argument("--fine-tune-learning-rate", type=float, default=None)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--contrast", choices=("none", "clahe"), default="none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="seeded subset of N images (smoke runs)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    parser.add_argument("--budget-minutes", type=float, default=240.0, help="skip runs once this is spent")
    parser.add_argument("--weights-dir", type=Path, default=SHARED / "weights")
    parser.add_argument("--data-dir", type=Path, default=None, help="CXR_DATA_DIR for runs (default: temp)")
    parser.add_argument("--out", type=Path, default=Path("bench/train_eval.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    settings = Settings(data_dir=data_dir)
    upgrade(settings=settings)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
            spent = (time.monotonic() - started) / 60
            if spent > args.budget_minutes:
                rows.append({"arch": arch, "mode": mode, "skipped": f"time budget spent ({spent:.0f} min)"})
                continue
            rows.append(run_one(arch, mode, args, settings))

    table = Table(*COLUMNS, title=f"cxr-dev, split by patient 70/10/20 seed {args.seed}, test split")
    for row in rows:
        table.add_row(*(_cell(row.get(c, row.get("skipped", "") if c == "params" else "")) for c in COLUMNS))
    Console(width=160).print(table)
    body = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "data_dir": str(data_dir),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
