"""Summarise leave-source-out runs of ``bench/train_eval.py`` by lever: per-run figures, then the
mean and spread over runs of each lever.

    python -m bench.lso_levers 'base=runs/base-s*.json' 'acq=runs/acq-s*.json' \\
        --out bench/results/lso-levers.json

Each argument is LABEL=GLOB, quoted so that the shell leaves the glob to the script; the first
label is the base the others are compared with. One run of one split seed moves the
held-out COVID AUC by several hundredths when it is repeated (fine-tuning on the CPU is not
deterministic), so a lever is read from its mean over seeds and repeats, next to the spread, and
from its paired difference per seed against the base. Research use only.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

FIGURES = ("lso_covid_auc", "lso_macro_f1", "covid_auc", "macro_f1", "train_min")


def runs(pattern: str) -> list[dict[str, Any]]:
    """Every result row of every train_eval JSON matching ``pattern``, with its file."""
    rows = []
    for path in sorted(glob.glob(pattern)):
        for row in json.loads(Path(path).read_text())["results"]:
            if "skipped" not in row:
                rows.append({"file": path, **row})
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(rows), "seeds": sorted({row["seed"] for row in rows})}
    for figure in FIGURES:
        values = [row[figure] for row in rows if row.get(figure) is not None]
        if values:
            out[figure] = {
                "mean": statistics.fmean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else None,
                "values": values,
            }
    return out


def paired(lever: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean over seeds of (lever's mean − base's mean) on the held-out COVID AUC, seeds both ran."""

    def by_seed(rows: list[dict[str, Any]]) -> dict[int, float]:
        seeds: dict[int, list[float]] = {}
        for row in rows:
            seeds.setdefault(row["seed"], []).append(row["lso_covid_auc"])
        return {seed: statistics.fmean(values) for seed, values in seeds.items()}

    mine, theirs = by_seed(lever), by_seed(base)
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None
    differences = [mine[seed] - theirs[seed] for seed in common]
    return {"seeds": common, "per_seed": differences, "mean": statistics.fmean(differences)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "levers", nargs="+", help="LABEL=GLOB of train_eval JSON files; the first is the base"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    groups: dict[str, list[dict[str, Any]]] = {}
    for spec in args.levers:
        label, sep, pattern = spec.partition("=")
        if not sep or not label:
            parser.error(f"{spec!r} is not LABEL=GLOB")
        groups[label] = runs(pattern)
        if not groups[label]:
            parser.error(f"{pattern!r} matches no train_eval results")
    base_label = next(iter(groups))
    summary = {
        label: {
            **summarise(rows),
            "vs_base": paired(rows, groups[base_label]) if label != base_label else None,
        }
        for label, rows in groups.items()
    }

    columns = ("lever", "runs", "LSO COVID AUC per run (seed)", "mean ± sd", "vs base", "LSO macro-F1",
               "internal COVID AUC", "internal macro-F1")  # fmt: skip
    table = Table(*columns, title=f"leave-source-out levers (base: {base_label})")
    for label, rows in groups.items():
        s = summary[label]
        per_run = " ".join(f"{row['lso_covid_auc']:.3f}({row['seed']})" for row in rows)
        auc = s["lso_covid_auc"]
        spread = f" ± {auc['sd']:.3f}" if auc["sd"] is not None else ""
        versus = s["vs_base"]
        table.add_row(
            label, str(len(rows)), per_run, f"{auc['mean']:.3f}{spread}",
            f"{versus['mean']:+.3f}" if versus else "—",
            *(f"{s[figure]['mean']:.3f}" for figure in ("lso_macro_f1", "covid_auc", "macro_f1")),
        )  # fmt: skip
    Console(width=200).print(table)
    if args.out:
        args.out.write_text(
            json.dumps({"base": base_label, "levers": summary, "runs": groups}, indent=2) + "\n"
        )
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
