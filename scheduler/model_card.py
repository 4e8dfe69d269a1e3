"""The model card a job report (and anything else that shows a model) carries: what the model
is, what it was trained on, how well it did on its test split with confidence intervals, what
it is for, what it cannot do, and where it came from.

Built from the version's manifest and, where the training run is in SQL, the run's description
of its training data (images per class and source). Plain data for a template; no HTML here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from cxr.core.db.models import TrainingRun
from cxr.core.db.session import session_scope
from cxr.core.settings import Settings
from modelstore import Manifest

#: Headline figures in the order a reader looks for them (``training_jobs.evaluation.HEADLINE``).
FIGURES = ("accuracy", "macro_f1", "macro_auc", "covid_sensitivity", "covid_specificity", "covid_auc")
#: Below this many test images (or per class), a card says the figures are uncertain.
SMALL_TEST_SET = 200
SMALL_CLASS = 30
#: A source that supplies at least this share of a class's training films confounds it.
CONFOUND_SHARE = 0.8


def _interval(ci: Any) -> list[float] | None:
    """A stored 95 % interval as two floats, or None when absent or malformed."""
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(x, int | float) for x in ci):
        return [float(ci[0]), float(ci[1])]
    return None


def figures_with_intervals(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline figures (``FIGURES``) of one metric record, each with its 95 % bootstrap
    interval when the record has one: what every model card, HTML or web, shows."""
    intervals = values.get("ci95") or {}
    return [
        {"name": name, "value": float(values[name]), "ci": _interval(intervals.get(name))}
        for name in FIGURES
        if isinstance(values.get(name), int | float)
    ]


def _figures(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**row, "name": row["name"].replace("_", " ")} for row in figures_with_intervals(values)]


def _training_data(settings: Settings, name: str, version: int) -> dict[str, Any] | None:
    """The training run's description of its data (``training_jobs.datasets.describe``)."""
    with session_scope(settings) as session:
        metrics = session.scalar(
            select(TrainingRun.metrics)
            .where(TrainingRun.name == name, TrainingRun.model_version == version)
            .order_by(TrainingRun.started_at.desc())
            .limit(1)
        )
    data = (metrics or {}).get("training_data")
    return data if isinstance(data, dict) else None


def class_by_source(data: dict[str, Any], classes: list[str]) -> dict[str, Any] | None:
    """Images per (class, source) as a table: sources as rows, classes as columns."""
    cells = data.get("per_class_and_source") or {}
    if not cells:
        return None
    table: dict[str, dict[str, int]] = {}
    for key, count in cells.items():
        label, _, source = str(key).partition(" / ")
        table.setdefault(source, {})[label] = int(count)
    columns = [c for c in classes if any(c in row for row in table.values())]
    rows = [{"source": s, "counts": [table[s].get(c, 0) for c in columns], "total": sum(table[s].values())}
            for s in sorted(table)]  # fmt: skip
    return {"columns": columns, "rows": rows}


def _confounds(table: dict[str, Any] | None) -> list[str]:
    """Classes that one source nearly gives away: '<class>: 92% from <source>'."""
    if not table:
        return []
    out = []
    for i, label in enumerate(table["columns"]):
        total = sum(row["counts"][i] for row in table["rows"])
        if not total:
            continue
        top = max(table["rows"], key=lambda row: row["counts"][i])
        share = top["counts"][i] / total
        if share >= CONFOUND_SHARE and len(table["rows"]) > 1:
            out.append(f"{label}: {share:.0%} of its films come from {top['source']}")
    return out


def model_card(settings: Settings, manifest: Manifest) -> dict[str, Any]:
    """Everything the card shows, as JSON-ready data."""
    data = _training_data(settings, manifest.name, manifest.version)
    inherited = False
    if data is None and manifest.adaptation is not None:  # heads refitted: the base saw the parent's data
        parent_name, _, parent_version = manifest.adaptation.parent.partition("@")
        if parent_version.isdigit():
            data, inherited = _training_data(settings, parent_name, int(parent_version)), True
    table = class_by_source(data, manifest.classes) if data else None
    metrics = [
        {"dataset": m.dataset, "n": int(m.n), "measured_at": m.measured_at.strftime("%Y-%m-%d"),
         "n_per_class": {k: int(v) for k, v in (m.values.get("n_per_class") or {}).items()},
         "figures": _figures(m.values)}
        for m in manifest.metrics
    ]  # fmt: skip
    test = next((m for m in metrics if "test" in m["dataset"]), metrics[0] if metrics else None)
    small = []
    if test is not None:
        if test["n"] < SMALL_TEST_SET:
            small.append(f"the test set has {test['n']} films")
        small += [f"{c} has {n} test films" for c, n in test["n_per_class"].items() if n < SMALL_CLASS]
    lineage = [
        ("version", manifest.ref),
        ("published", manifest.created_at.strftime("%Y-%m-%d %H:%M UTC")),
        ("file sha256", manifest.sha256),
        ("training data fingerprint", manifest.training_data_fingerprint or "not recorded"),
    ]
    if manifest.parent_version is not None:
        lineage.append(("parent version", f"{manifest.name}@{manifest.parent_version}"))
    if manifest.adaptation is not None:
        a = manifest.adaptation
        lineage.append(
            ("adapted from", f"{a.parent} on {a.n_local} local films ({a.local_data}, mix {a.mix})")
        )
    if manifest.library_versions:
        lineage.append(
            ("libraries", ", ".join(f"{k} {v}" for k, v in sorted(manifest.library_versions.items())))
        )
    contract = manifest.input
    return {
        "ref": manifest.ref,
        "architecture": manifest.architecture,
        "description": manifest.description,
        "classes": list(manifest.classes),
        "input": f"{contract.height}×{contract.width}×{contract.channels}, {contract.normalization}",
        "intended_use": manifest.intended_use,
        "training_data": None if data is None else {
            "source": data.get("source"), "n_images": data.get("n_images"),
            "n_patients": data.get("n_patients"), "per_class": data.get("per_class") or {},
            "table": table, "inherited": inherited,
        },
        "metrics": metrics,
        "confounds": _confounds(table),
        "small_test": small,
        "lineage": lineage,
    }  # fmt: skip
