"""Evaluation reports: plots (matplotlib, Agg), Markdown, JSON and a self-contained HTML page
(Jinja2, autoescaped, the plots embedded), written to object storage.

Layout: ``reports/<kind>/<id>/{report.json, report.md, report.html, confusion_matrix.png,
roc_curves.png, reliability.png[, training_curves.png, penalty_path.png]}``. The figures are
rendered from the metrics dictionary of ``training_jobs.evaluation`` plus the raw (y_true, probs)
for the ROC curves, so a report always shows the numbers it was computed from.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxr import INTENDED_USE
from cxr.core.errors import ObjectNotFound
from cxr.core.storage import ObjectStore
from training_jobs.evaluation import HEADLINE

log = logging.getLogger(__name__)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def confusion_matrix_png(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> bytes:
    plt = _pyplot()
    counts = np.asarray(matrix)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.4 * len(classes) + 2, 1.4 * len(classes) + 1.5))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(counts):
        ax.text(
            j,
            i,
            f"{value}\n{share[i, j]:.0%}",
            ha="center",
            va="center",
            color="white" if share[i, j] > 0.5 else "black",
        )
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (count, share of true class)")
    return _png(fig)


def roc_png(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], per_class: Mapping) -> bytes:
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, name in enumerate(classes):
        positive = np.asarray(y_true) == i
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, i])
        ax.plot(fpr, tpr, label=f"{name} (AUC {per_class[name]['auc']:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_title("ROC, one class vs the rest")
    ax.legend(loc="lower right")
    return _png(fig)


def reliability_png(rows: Sequence[Mapping[str, float]], ece: float) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    centers = [(r["low"] + r["high"]) / 2 for r in rows]
    width = rows[0]["high"] - rows[0]["low"] if rows else 0.1
    ax.bar(centers, [r["accuracy"] for r in rows], width=width * 0.9, alpha=0.7, label="accuracy")
    ax.plot(
        [r["confidence"] for r in rows],
        [r["accuracy"] for r in rows],
        "o",
        color="black",
        label="bin mean confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    return _png(fig)


def training_curves_png(history: Mapping[str, Sequence[float]]) -> bytes:
    """Loss and accuracy per epoch, training against validation."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + metric)
            if values:
                epochs = range(1, len(values) + 1)
                ax.plot(epochs, values, style, marker="o", label=(prefix or "train_") + metric)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    return _png(fig)


def penalty_path_png(paths: Mapping[str, Mapping[float, float]]) -> bytes:
    """Validation log-loss against the logistic head's C, one line per head; the chosen C ringed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, path in paths.items():
        penalties = sorted(path)
        losses = [path[c] for c in penalties]
        (line,) = ax.plot(penalties, losses, marker="o", label=name)
        best = min(penalties, key=path.__getitem__)
        ax.plot([best], [path[best]], "o", markersize=12, fillstyle="none", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("C (inverse L2 penalty)")
    ax.set_ylabel("validation log-loss")
    ax.set_title("logistic head: penalty chosen on the validation split")
    ax.legend()
    return _png(fig)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(title: str, metrics: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """A human-readable report: context, headline figures with CIs, per-class table, matrix."""
    lines = [f"# {title}", "", f"**{INTENDED_USE}**", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += [
        "",
        "## Headline figures (95% bootstrap CI)",
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
    ]
    for key in HEADLINE:
        if key in metrics:
            ci = metrics["ci95"].get(key)
            interval = f"{ci[0]:.3f} – {ci[1]:.3f}" if ci else "n/a"
            lines.append(f"| {key} | {_fmt(metrics[key])} | {interval} |")
    lines.append(f"| expected calibration error | {_fmt(metrics['ece'])} | |")
    lines += ["", "## Per class (one vs rest)", ""]
    lines += [
        "| class | N | precision | recall / sensitivity | specificity | F1 | AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in metrics["per_class"].items():
        cells = [row[k] for k in ("n", "precision", "recall", "specificity", "f1", "auc")]
        lines.append(f"| {name} | " + " | ".join(_fmt(c) for c in cells) + " |")
    classes = metrics["classes"]
    lines += ["", "## Confusion matrix (rows true, columns predicted)", ""]
    lines += ["| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for name, row in zip(classes, metrics["confusion_matrix"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += [
        "",
        "![confusion matrix](confusion_matrix.png) ![ROC](roc_curves.png) ![reliability](reliability.png)",
        "",
    ]
    return "\n".join(lines)


def write_report(
    store: ObjectStore,
    prefix: str,
    *,
    title: str,
    metrics: Mapping[str, Any],
    y_true: np.ndarray,
    probs: np.ndarray,
    context: Mapping[str, Any],
    extra_files: Mapping[str, bytes] | None = None,
) -> str:
    """Write the JSON, Markdown and plots under ``prefix``; returns the report.json URI."""
    classes = metrics["classes"]
    files: dict[str, bytes] = {
        "confusion_matrix.png": confusion_matrix_png(metrics["confusion_matrix"], classes),
        "roc_curves.png": roc_png(y_true, probs, classes, metrics["per_class"]),
        "reliability.png": reliability_png(metrics["reliability"], metrics["ece"]),
        **(extra_files or {}),
    }
    for name, data in files.items():
        store.put(f"{prefix}/{name}", data, content_type="image/png" if name.endswith(".png") else None)
    store.put(f"{prefix}/report.md", markdown(title, metrics, context).encode(), content_type="text/markdown")
    body = {"title": title, "intended_use": INTENDED_USE, "context": dict(context), "metrics": dict(metrics)}
    uri = store.put(
        f"{prefix}/report.json",
        json.dumps(body, indent=2, default=str).encode(),
        content_type="application/json",
    )
    write_html(store, prefix, title=title, metrics=metrics, context=context, images=files)
    log.info("report written to %s", uri)
    return uri


#: The plots an HTML report embeds, in reading order, where they exist.
FIGURES = (
    "training_curves.png", "penalty_path.png", "confusion_matrix.png", "roc_curves.png", "reliability.png",
)  # fmt: skip


@functools.cache
def _templates() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("training_jobs", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["count"] = lambda n: f"{int(n):,}".replace(",", "\u202f")
    env.filters["fixed"] = lambda x, digits=3: "n/a" if x is None else f"{float(x):.{digits}f}"
    return env


def _figures(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    intervals = values.get("ci95") or {}
    return [
        {"name": key.replace("_", " "), "value": values.get(key), "ci": intervals.get(key)}
        for key in HEADLINE
        if key in values
    ]


def html_page(
    title: str, metrics: Mapping[str, Any], context: Mapping[str, Any], images: Mapping[str, bytes]
) -> str:
    """The report as one HTML page: context, headline figures with CIs, per class, confusion
    matrix, per source (when measured), and the plots."""
    classes = list(metrics["classes"])
    per_source = metrics.get("per_source") or {}
    verdict = metrics.get("site_verdict")
    return _templates().get_template("evaluation_report.html").render(
        title=title, intended_use=INTENDED_USE,
        context=[(key, value) for key, value in context.items()],
        n=metrics["n"], n_per_class=metrics.get("n_per_class") or {},
        headline=_figures(metrics), ece=metrics.get("ece"),
        per_class=metrics["per_class"], classes=classes,
        confusion=list(zip(classes, metrics["confusion_matrix"], strict=True)),
        headline_names=[key.replace("_", " ") for key in HEADLINE],
        per_source=[
            {"source": name, "n": row["n"],
             "figures": [{"value": row.get(k), "ci": (row.get("ci95") or {}).get(k)} for k in HEADLINE]}
            for name, row in per_source.items()
        ],
        verdict=verdict.get("text") if isinstance(verdict, Mapping) else None,
        images=[
            (name, "data:image/png;base64," + base64.b64encode(images[name]).decode("ascii"))
            for name in FIGURES if name in images
        ],
    )  # fmt: skip


def write_html(
    store: ObjectStore,
    prefix: str,
    *,
    title: str,
    metrics: Mapping[str, Any],
    context: Mapping[str, Any],
    images: Mapping[str, bytes] | None = None,
) -> str:
    """Write ``report.html`` beside the Markdown; the plots are read back from ``prefix`` unless
    given. Called again by callers that add figures after the report (per source, the site
    verdict), so the page shows every figure the JSON holds."""
    if images is None:
        images = {}
        for name in FIGURES:
            try:
                images[name] = store.get(f"{prefix}/{name}")
            except ObjectNotFound:
                continue
    page = html_page(title, metrics, context, images)
    return store.put(f"{prefix}/report.html", page.encode("utf-8"), content_type="text/html")
