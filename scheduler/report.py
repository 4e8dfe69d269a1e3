"""A job's report: a CSV of per-image results and one self-contained HTML page.

The page is rendered from Jinja2 templates (``scheduler/templates/``) with autoescaping on, so
every string that comes from an archive (file names, URIs, failure reasons) is escaped wherever
it is shown. It embeds everything (charts and films as data URIs) and carries no script, so it
can be mailed or opened from object storage without a server. Both files go to object storage
under ``reports/jobs/<job_id>/``; a finished job writes them itself (``cxr.report_job``), and
``cxr jobs report ID --out PATH`` / ``cxr score --wait --report PATH`` also write a copy.

Public entry points (the CLI and the web pages call them): ``write_report``, ``ensure_report``,
``render_html``, ``write_csv`` / ``write_csv_to``, ``export_csv``.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import functools
import heapq
import io
import logging
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import jinja2

from cxr import INTENDED_USE
from cxr.core.db.models import Job
from cxr.core.db.session import session_scope
from cxr.core.labels import is_positive
from cxr.core.privacy import JOIN_KEY_COLUMNS
from cxr.core.settings import Settings
from cxr.core.storage import open_store, read_uri
from modelstore import Manifest, open_model_store
from scheduler import report_images
from scheduler.model_card import model_card
from scheduler.summary import Explained, ImageRow, explanations, get_job, image_rows, job_summary

log = logging.getLogger(__name__)

#: Films shown per positive class (the most confident of that class) and near the threshold.
GALLERY_PER_CLASS = 6
BORDERLINE_SIZE = 6
#: A job's CSV is built in memory up to this size, then in a temporary file.
CSV_IN_MEMORY_BYTES = 16 * 1024 * 1024
#: Failed files listed by name (all of them are in the CSV).
FAILED_FILES_SHOWN = 100

# -- the per-image CSV --------------------------------------------------------------------------

#: A column: its header and how a row fills it. Add a column by adding an entry.
Column = tuple[str, Callable[[ImageRow, Explained | None], str]]


def _num(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def csv_columns(manifest: Manifest) -> list[Column]:
    """The CSV's columns for this model: outcome, label and probabilities, "positive at the
    operating point" per class that has one, the shift percentile and flag, the explained class
    and shortcut score of explained images, why an image failed or was skipped, and the salted
    DICOM join keys."""

    def prob(name: str) -> Callable[[ImageRow, Explained | None], str]:
        return lambda row, _: _num((row.probabilities or {}).get(name))

    def at_point(name: str, threshold: float) -> Callable[[ImageRow, Explained | None], str]:
        def cell(row: ImageRow, _: Explained | None) -> str:
            p = (row.probabilities or {}).get(name)
            return "" if p is None else _yes_no(p >= threshold)

        return cell

    return [
        ("uri", lambda r, _: r.uri),
        ("sha256", lambda r, _: r.sha256 or ""),
        ("outcome", lambda r, _: r.outcome),
        ("label", lambda r, _: r.label or ""),
        ("confidence", lambda r, _: _num(r.confidence)),
        *((f"p_{c}", prob(c)) for c in manifest.classes),
        *((f"{c}_at_operating_point", at_point(c, p.threshold))
          for c, p in manifest.operating_points.items()),
        ("shift_percentile", lambda r, _: _num(r.shift_percentile, 2)),
        ("out_of_distribution",
         lambda r, _: "" if r.out_of_distribution is None else _yes_no(r.out_of_distribution)),
        ("explained_class", lambda _, e: (e.label or "") if e else ""),
        ("shortcut_score", lambda _, e: _num(e.shortcut_score, 4) if e else ""),
        ("failure_stage", lambda r, _: r.failure_stage or ""),
        ("failure_reason", lambda r, _: r.failure_reason or ""),
        ("skip_reason", lambda r, _: r.skip_reason or ""),
        *((name, _join_key(i)) for i, name in enumerate(JOIN_KEY_COLUMNS)),
    ]  # fmt: skip


def _join_key(index: int) -> Callable[[ImageRow, Explained | None], str]:
    """The salted hash of a DICOM join key (``cxr.core.privacy.JOIN_KEY_COLUMNS``), if any."""
    return lambda row, _: (row.join_keys[index] if index < len(row.join_keys) else None) or ""


def write_csv_to(settings: Settings, job_id: str, manifest: Manifest, stream: BinaryIO) -> int:
    """Stream one row per image of the job (``csv_columns``), in URI order, as UTF-8 into
    ``stream``; returns the rows written. Memory stays flat however large the job."""
    columns = csv_columns(manifest)
    explained = explanations(settings, get_job(settings, job_id))
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="", write_through=True)
    try:
        writer = csv.writer(text)
        writer.writerow([name for name, _ in columns])
        rows = 0
        for row in image_rows(settings, job_id):
            info = explained.get(row.sha256 or "")
            writer.writerow([fill(row, info) for _, fill in columns])
            rows += 1
        text.flush()
    finally:
        text.detach()  # leave ``stream`` open for the caller
    return rows


def write_csv(settings: Settings, job_id: str, manifest: Manifest) -> bytes:
    """The job's per-image CSV as bytes (``write_csv_to``; for small jobs and callers that want
    the whole file in memory)."""
    buffer = io.BytesIO()
    write_csv_to(settings, job_id, manifest, buffer)
    return buffer.getvalue()


# -- the HTML page ------------------------------------------------------------------------------


@functools.cache
def templates() -> jinja2.Environment:
    """The report templates, autoescaped (HTML), undefined names an error."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("scheduler", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["count"] = lambda n: f"{int(n):,}".replace(",", "\u202f")  # thin space: 12 345
    env.filters["fixed"] = lambda x, digits=3: "n/a" if x is None else f"{float(x):.{digits}f}"
    env.filters["percent"] = lambda x, digits=1: "n/a" if x is None else f"{100 * float(x):.{digits}f}%"
    return env


def display_name(uri: str) -> str:
    """The file name a person recognises: the URI's last segment, percent-decoded (escaped by
    the template like any other string from the archive)."""
    return urllib.parse.unquote(uri.rstrip("/").rsplit("/", 1)[-1]) or uri


def _when(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    value = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration_text(seconds: float) -> str:
    """'2 h 05 min', '3 min 07 s', '12.4 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _card(
    settings: Settings, row: ImageRow, anchor: str, explained: dict[str, Explained], note: str = ""
) -> dict[str, Any]:
    info = explained.get(row.sha256 or "")
    return {
        "anchor": anchor,
        "name": display_name(row.uri),
        "uri": row.uri,
        "label": row.label,
        "confidence": row.confidence,
        "note": note,
        "film": report_images.film(row.uri, settings),
        "overlay": report_images.overlay(info.overlay_uri, settings) if info else None,
        "explained_class": info.label if info else None,
        "shortcut_score": info.shortcut_score if info else None,
    }


@dataclass
class _Picks:
    """What the page shows of the job's images, gathered in one streamed pass (a job may hold
    millions): the top films of each positive class, the borderline films, and the counts at
    each operating point. Heaps keep only what is shown."""

    top: dict[str, list[tuple[float, str, ImageRow]]] = field(default_factory=dict)
    labelled: collections.Counter[str] = field(default_factory=collections.Counter)
    edge: list[tuple[float, str, ImageRow, str]] = field(default_factory=list)
    at_point: collections.Counter[str] = field(default_factory=collections.Counter)
    scored: collections.Counter[str] = field(default_factory=collections.Counter)


def _keep(heap: list, item: tuple, size: int) -> None:
    """Keep the ``size`` largest items of a min-heap."""
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)


def _distance(probs: dict[str, float], manifest: Manifest) -> tuple[float, str] | None:
    """How near a film is to a decision: to a class's operating-point threshold where the model
    has them, else to a tie between its two most probable classes."""
    if manifest.operating_points:
        gaps = [(abs(probs[c] - p.threshold), f"p({c}) {probs[c]:.3f} vs threshold {p.threshold:.3f}")
                for c, p in manifest.operating_points.items() if c in probs]  # fmt: skip
        return min(gaps) if gaps else None
    if len(probs) < 2:
        return None
    (first, p1), (second, p2) = sorted(probs.items(), key=lambda kv: -kv[1])[:2]
    return p1 - p2, f"p({first}) {p1:.3f} vs p({second}) {p2:.3f}"


def _pick(rows: Iterable[ImageRow], manifest: Manifest) -> _Picks:
    positive = [c for c in manifest.classes if is_positive(c)]
    picks = _Picks(top={c: [] for c in positive})
    for row in rows:
        probs = row.probabilities or {}
        if row.label is not None:
            picks.labelled[row.label] += 1
            if row.label in picks.top and row.label in probs:
                # larger probability first, then the earlier URI: negate the URI's order via a key
                _keep(picks.top[row.label], (probs[row.label], _reverse(row.uri), row), GALLERY_PER_CLASS)
        if row.outcome != "scored" or not probs:
            continue
        for name, point in manifest.operating_points.items():
            if name in probs:
                picks.scored[name] += 1
                picks.at_point[name] += probs[name] >= point.threshold
        near = _distance(probs, manifest)
        if near is not None:
            _keep(picks.edge, (-near[0], _reverse(row.uri), row, near[1]), BORDERLINE_SIZE)
    return picks


class _reverse(str):  # noqa: N801  (a sort key, used like a function)
    """A string that sorts backwards, so a max-heap of (score, name) prefers the earlier name."""

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)

    def __gt__(self, other: str) -> bool:
        return str.__lt__(self, other)


def _galleries(settings: Settings, job: Job, picks: _Picks) -> dict[str, Any]:
    """Top-k films of each positive class (so a rare class is shown however many films the
    common one has), and the borderline films."""
    per_class = {name: [row for *_, row in sorted(heap, reverse=True)] for name, heap in picks.top.items()}
    borderline = [(row, why) for _, _, row, why in sorted(picks.edge, reverse=True)]
    shown = {r.sha256 for picked in per_class.values() for r in picked if r.sha256}
    shown |= {r.sha256 for r, _ in borderline if r.sha256}
    explained = explanations(settings, job, sorted(shown)) if shown else {}
    classes = [
        {"name": name, "total": picks.labelled[name],
         "cards": [_card(settings, r, f"{name}-{i}", explained) for i, r in enumerate(picked)]}
        for name, picked in per_class.items()
    ]  # fmt: skip
    edge = [_card(settings, r, f"borderline-{i}", explained, why) for i, (r, why) in enumerate(borderline)]
    return {"classes": classes, "borderline": edge, "has_overlays": bool(explained)}


def _operating_points(picks: _Picks, manifest: Manifest) -> list[dict[str, Any]]:
    return [
        {"class": name, "threshold": point.threshold, "target": point.target_sensitivity,
         "sensitivity": point.validation_sensitivity, "specificity": point.validation_specificity,
         "positive": picks.at_point[name], "scored": picks.scored[name]}
        for name, point in manifest.operating_points.items()
    ]  # fmt: skip


def report_context(settings: Settings, job_id: str, csv_href: str = "results.csv") -> dict[str, Any]:
    """Everything the job report shows, as plain data (the template only lays it out)."""
    summary = job_summary(settings, job_id)
    job = get_job(settings, job_id)
    manifest = open_model_store(settings).manifest(job.model_name, job.model_version)
    picks = _pick(image_rows(settings, job_id), manifest)
    shortcut = summary["shortcut"]
    shortcut_chart = None
    if shortcut["count"]:
        from scheduler.summary import shortcut_scores

        shortcut_chart = report_images.shortcut_chart(shortcut_scores(settings, job), shortcut["threshold"])
    galleries = _galleries(settings, job, picks)
    return {
        "job": {
            "id": job.id, "source": job.source, "model": summary["model"], "status": summary["status"],
            "error": job.error,
            "started": _when(job.created_at), "finished": _when(job.finished_at),
            "duration": duration_text(summary["seconds"]) if job.finished_at else None,
            "images_per_second": summary["images_per_second"],
        },
        "generated": _when(dt.datetime.now(dt.UTC)),
        "intended_use": INTENDED_USE,
        "counts": [(name, summary[name]) for name in ("total", "scored", "skipped", "failed")],
        "by_label": summary["by_label"],
        "label_chart": report_images.label_chart(summary["by_label"]) if summary["by_label"] else None,
        "galleries": galleries,
        "colour_bar": report_images.colour_bar() if galleries["has_overlays"] else None,
        "shift": summary.get("shift"),
        "operating_points": _operating_points(picks, manifest),
        "shortcut": shortcut,
        "shortcut_chart": shortcut_chart,
        "failures_by_reason": summary["failures_by_reason"],
        "failed_files": [
            {"name": display_name(f["uri"]), "uri": f["uri"], "stage": f["stage"], "reason": f["reason"]}
            for f in summary["failures"][:FAILED_FILES_SHOWN]
        ],
        "skipped_by_reason": summary["skipped_by_reason"],
        "csv_href": csv_href,
        "csv_uri": job.csv_uri,
        "card": model_card(settings, manifest),
    }  # fmt: skip


def render_html(settings: Settings, job_id: str, *, csv_href: str = "results.csv") -> str:
    """The job report as one HTML page; ``csv_href`` is where its CSV link points (by default
    the CSV beside it in object storage)."""
    return templates().get_template("job_report.html").render(report_context(settings, job_id, csv_href))


# -- storing ------------------------------------------------------------------------------------


def write_report(settings: Settings, job_id: str, local_path: Path | None = None) -> dict[str, Any]:
    """Write the CSV and HTML to object storage (and the HTML to ``local_path``); record both
    URIs on the job."""
    job = get_job(settings, job_id)
    manifest = open_model_store(settings).manifest(job.model_name, job.model_version)
    store = open_store(settings=settings)
    with tempfile.SpooledTemporaryFile(max_size=CSV_IN_MEMORY_BYTES) as spool:
        write_csv_to(settings, job_id, manifest, spool)  # type: ignore[arg-type]
        spool.seek(0)
        csv_uri = store.put(f"reports/jobs/{job_id}/results.csv", spool, "text/csv")  # type: ignore[arg-type]
    with session_scope(settings) as session:  # first, so the page can name it
        session.get(Job, job_id).csv_uri = csv_uri
    page = render_html(settings, job_id).encode("utf-8")
    html_uri = store.put(f"reports/jobs/{job_id}/report.html", page, "text/html")
    if local_path is not None:
        _write_local(local_path, page)
    with session_scope(settings) as session:
        session.get(Job, job_id).report_uri = html_uri
    return {"html": html_uri, "csv": csv_uri, "local": str(local_path) if local_path else None}


def _write_local(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:  # name the file: a write error alone does not
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def ensure_report(
    settings: Settings, job_id: str, local_path: Path | None = None, *, rebuild: bool = False
) -> dict[str, Any]:
    """The job's stored report (written when it finished), copied to ``local_path``; written now
    if the job has none yet (a cancelled job, a job from before reports were automatic, a report
    task that has not run) or ``rebuild`` asks. Same answer as ``write_report``."""
    job = get_job(settings, job_id)
    if rebuild or not job.report_uri or not job.csv_uri:
        return write_report(settings, job_id, local_path)
    if local_path is not None:
        _write_local(local_path, read_uri(job.report_uri, settings))
    return {"html": job.report_uri, "csv": job.csv_uri, "local": str(local_path) if local_path else None}


def export_csv(settings: Settings, job_id: str, path: Path) -> int:
    """Write the job's per-image CSV (built now from SQL, streamed) to ``path``; returns the rows
    written."""
    job = get_job(settings, job_id)
    manifest = open_model_store(settings).manifest(job.model_name, job.model_version)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as stream:
            return write_csv_to(settings, job_id, manifest, stream)
    except OSError as exc:  # name the file: a write error alone does not
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
