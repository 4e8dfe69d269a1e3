"""Train and evaluate each architecture on cxr-dev, three-class and binary, within a time budget.

    python bench/train_eval.py                                   # the full benchmark (hours on CPU)
    python bench/train_eval.py --archs simple_cnn --epochs 1 --image-size 64 --limit 120   # smoke
    python bench/train_eval.py --archs mobilenetv2+resnet50+vgg16 --head logistic --seeds 0,1,2
    python bench/train_eval.py --archs mobilenetv2 --head logistic --holdout-sources actualmed,figure1

Every run uses the same patient-level split (70/10/20, seed 0 unless --seeds lists others: each
seed is another split, which shows how much a figure owes to one particular test set) through
``training_jobs.train.train``, exactly as ``cxr train`` does, in a scratch data directory (its own
SQLite and object store) unless --data-dir says otherwise. ImageNet weights are taken from
--weights-dir for the architectures that have a file there (an ensemble only when every member
has one); the others train from scratch. With --holdout-sources (leave-source-out) those sources'
films never enter train or validation and are evaluated on their own as well (the lso_* columns):
on cxr-dev the source nearly gives the label away, so that is the figure to optimise.
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
from cxr.core.errors import ConfigurationError
from cxr.core.settings import Settings
from training_jobs.architectures import ARCHITECTURES, ensemble_members, is_ensemble, resolve_weights
from training_jobs.deshortcut import Deshortcut
from training_jobs.train import TrainConfig, train

#: ``../shared`` beside the checkout: the dev data and the offline ImageNet weights.
SHARED = Path(__file__).resolve().parents[2] / "shared"

MODES = {"3class": ("covid", "normal", "pneumonia"), "binary": ("covid", "non-covid")}
COLUMNS = ("arch", "mode", "head", "seed", "weights", "params", "train_min", "macro_f1", "covid_sens",
           "covid_spec", "covid_auc", "macro_auc")  # fmt: skip
LSO_COLUMNS = ("n_lso", "lso_macro_f1", "lso_covid_sens", "lso_covid_spec", "lso_covid_auc")
#: What the JSON keeps of the leave-source-out figures.
LSO_KEEP = ("n", "n_per_class", "accuracy", "macro_f1", "macro_f1_classes", "macro_auc", "covid_sensitivity",
            "covid_specificity", "covid_auc", "confusion_matrix", "ci95", "per_source")  # fmt: skip


def weights_for(arch: str, weights_dir: Path | None) -> str:
    """The weights folder when it holds Keras' official file for every member, else "none"."""
    if weights_dir is None:
        return "none"
    members = ensemble_members(arch) if is_ensemble(arch) else (arch,)
    try:
        for member in members:
            resolve_weights(str(weights_dir), member)
    except (ConfigurationError, KeyError):  # no file there, or a from-scratch architecture
        return "none"
    return str(weights_dir)


def run_one(arch: str, mode: str, seed: int, args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    weights = weights_for(arch, args.weights_dir)
    head = args.head if weights != "none" else "dense"
    crop = (f"-{args.lung_crop}" if args.lung_crop != "none" else "") + ("-ds" if args.deshortcut else "")
    crop += "-acq" if args.deshortcut and args.acquisition else ""
    crop += "-bal" if args.balance_sources else ""
    crop += "-ema" if args.fine_tune_ema else ""
    name = f"bench-{arch.replace('_', '-').replace('+', '-')}-{mode}-{head}{crop}-s{seed}"
    config = TrainConfig(
        data=args.data, arch=arch, classes=MODES[mode], name=name, head=head,
        image_size=args.image_size, epochs=args.epochs, weights=weights,
        fine_tune_layers=args.fine_tune_layers if weights != "none" else 0, batch_size=args.batch_size,
        fine_tune_epochs=args.fine_tune_epochs, fine_tune_learning_rate=args.fine_tune_learning_rate,
        label_smoothing=args.label_smoothing, contrast=args.contrast, fine_tune_ema=args.fine_tune_ema,
        seed=seed, limit=args.limit, bootstrap_resamples=args.bootstrap, verbose=2,
        lung_crop=args.lung_crop, segmenter=args.segmenter,
        deshortcut=(
            Deshortcut(copies=args.deshortcut, acquisition=args.acquisition) if args.deshortcut else None
        ),
        balance_sources=args.balance_sources,
        holdout_sources=tuple(s.strip() for s in args.holdout_sources.split(",") if s.strip()),
        publish=True,  # into the run's scratch store, so that `cxr explain`/`cxr score` can use it
    )  # fmt: skip
    result = train(config, settings)
    m = result.metrics
    row: dict[str, Any] = {
        "lung_crop": args.lung_crop,
        "deshortcut": args.deshortcut,
        "acquisition": args.acquisition,
        "balance_sources": args.balance_sources,
        "fine_tune_ema": args.fine_tune_ema,
        "arch": arch,
        "mode": mode,
        "head": head,
        "seed": seed,
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
        "head_penalties": result.head_penalties,
        "per_source": m["per_source"],
    }
    held = result.holdout_metrics
    if held is not None:
        row |= {
            "lso_macro_f1": held["macro_f1"],
            "lso_covid_sens": held.get("covid_sensitivity"),
            "lso_covid_spec": held.get("covid_specificity"),
            "lso_covid_auc": held.get("covid_auc"),
            "n_lso": held["n"],
            "leave_source_out": {key: held[key] for key in LSO_KEEP if key in held},
            "lso_report": result.holdout_report_uri,
        }
    return row


def _cell(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(SHARED / "data" / "cxr-dev" / "manifest.csv"))
    parser.add_argument(
        "--archs",
        default=",".join(ARCHITECTURES),
        help="comma-separated; join pretrained ones with + for an ensemble",
    )
    parser.add_argument(
        "--head", choices=("dense", "logistic"), default="dense", help="for pretrained models"
    )
    parser.add_argument("--modes", default="3class,binary", help="3class and/or binary")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fine-tune-layers", type=int, default=0)
    parser.add_argument("--fine-tune-epochs", type=int, default=10)
    parser.add_argument("--fine-tune-learning-rate", type=float, default=None)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument(
        "--fine-tune-ema",
        type=float,
        default=0.0,
        help="EMA momentum of the weights while fine-tuning; 0: off",
    )
    parser.add_argument("--contrast", choices=("none", "clahe"), default="none")
    parser.add_argument("--lung-crop", choices=("none", "box", "mask"), default="none")
    parser.add_argument(
        "--segmenter", default=None, help="the lung segmenter in the runs' model store, e.g. lungs@production"
    )
    parser.add_argument(
        "--deshortcut",
        type=int,
        default=0,
        help="de-shortcut augmentation: N marked copies of the training split",
    )
    parser.add_argument(
        "--acquisition",
        type=float,
        default=0.0,
        help="with --deshortcut: the chance that a copy is also restyled as another site's acquisition",
    )
    parser.add_argument(
        "--balance-sources",
        action="store_true",
        help="weigh training images so that every source weighs the same within each class",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated split seeds; one run per seed")
    parser.add_argument(
        "--holdout-sources",
        default="",
        help="leave-source-out: comma-separated sources (e.g. actualmed,figure1) kept out of train and "
        "validation and evaluated on their own",
    )
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
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
            for seed in seeds:
                spent = (time.monotonic() - started) / 60
                if spent > args.budget_minutes:
                    skipped = f"time budget spent ({spent:.0f} min)"
                    rows.append({"arch": arch, "mode": mode, "seed": seed, "skipped": skipped})
                    continue
                rows.append(run_one(arch, mode, seed, args, settings))

    columns = COLUMNS + (LSO_COLUMNS if args.holdout_sources else ())
    held = f", held out: {args.holdout_sources} (lso_*)" if args.holdout_sources else ""
    title = f"cxr-dev, split by patient 70/10/20 (seeds {args.seeds}), test split{held}"
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(_cell(row.get(c, row.get("skipped", "") if c == "params" else "")) for c in columns))
    Console(width=200 if args.holdout_sources else 160).print(table)
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
