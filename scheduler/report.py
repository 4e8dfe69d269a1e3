"""A job's report: a CSV of per-image results and one self-contained HTML page.

The page embeds everything (charts and thumbnails as data URIs), so it can be mailed or opened
from object storage without a server. Both files go to object storage under
``reports/jobs/<job_id>/``; ``cxr score --report PATH`` also writes the HTML to PATH.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
from pathlib import Path
from typing import Any

from cxr import INTENDED_USE
from cxr.core.db.models import Artifact, Job
from cxr.core.db.session import session_scope
from cxr.core.errors import CxrError
from cxr.core.imaging import decode_image
from cxr.core.labels import is_positive
from cxr.core.settings import Settings
from cxr.core.storage import open_store, read_uri
from modelstore import Manifest, open_model_store
from scheduler.summary import ImageRow, get_job, image_rows, job_summary

log = logging.getLogger(__name__)

GALLERY_SIZE = 12
THUMBNAIL_PX = 192


def write_csv(settings: Settings, job_id: str, manifest: Manifest) -> bytes:
    """One row per image of the job: outcome, label and probabilities, the shift percentile and
    flag, "positive at the operating point" per class that has one, and why it failed or was
    skipped."""
    classes, points = manifest.classes, manifest.operating_points
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "uri",
            "sha256",
            "outcome",
            "label",
            "confidence",
            *(f"p_{c}" for c in classes),
            *(f"{c}_at_operating_point" for c in points),
            "shift_percentile",
            "out_of_distribution",
            "failure_stage",
            "failure_reason",
            "skip_reason",
        ]
    )
    for row in image_rows(settings, job_id):
        probs = row.probabilities or {}
        writer.writerow(
            [
                row.uri, row.sha256 or "", row.outcome, row.label or "",
                f"{row.confidence:.6f}" if row.confidence is not None else "",
                *(f"{probs[c]:.6f}" if c in probs else "" for c in classes),
                *(_yes_no(probs[c] >= p.threshold) if c in probs else "" for c, p in points.items()),
                f"{row.shift_percentile:.2f}" if row.shift_percentile is not None else "",
                "" if row.out_of_distribution is None else _yes_no(row.out_of_distribution),
                row.failure_stage or "", row.failure_reason or "", row.skip_reason or "",
            ]
        )  # fmt: skip
    return buffer.getvalue().encode("utf-8")


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _png_data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _label_chart(by_label: dict[str, int]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=100)
    labels, counts = list(by_label), list(by_label.values())
    ax.barh(labels, counts, color=["#c0392b" if is_positive(x) else "#2e86c1" for x in labels])
    for y, count in enumerate(counts):
        ax.text(count, y, f" {count}", va="center")
    ax.set_xlabel("images")
    ax.set_title("Predicted labels")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return _png_data_uri(buffer.getvalue())


def _shortcut_chart(scores: list[float], threshold: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=100)
    ax.hist(scores, bins=[i / 20 for i in range(21)], color="#7d3c98")
    ax.axvline(threshold, color="#c0392b", linestyle="--", label=f"alert above {threshold}")
    ax.axvline(0.4375, color="#888", linestyle=":", label="uniform heatmap (0.44)")
    ax.set_xlabel("share of heatmap energy outside the chest box")
    ax.set_ylabel("images")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return _png_data_uri(buffer.getvalue())


def _shortcut_section(settings: Settings, job: Job, summary: dict[str, Any]) -> str:
    from scheduler.summary import shortcut_scores

    shortcut = summary["shortcut"]
    if not shortcut["count"]:
        return (
            "<p>No explained image of this job has a non-empty heatmap (explain with "
            "<code>--explain positives</code> or <code>all</code>).</p>"
        )
    chart = _shortcut_chart(shortcut_scores(settings, job), shortcut["threshold"])
    return (
        f'<img src="{chart}" alt="shortcut score histogram"><p>{shortcut["count"]} explained images: '
        f"mean {shortcut['mean']:.3f}, median {shortcut['median']:.3f}, "
        f"{100 * shortcut['share_above']:.0f}% above {shortcut['threshold']}. A high score means the "
        "model's evidence lies at the borders (markers, burned-in text), not in the lungs; "
        "see docs/EXPLANATIONS.md for the method and its limits.</p>"
    )


def _thumbnail(uri: str, settings: Settings) -> str | None:
    from PIL import Image

    try:
        decoded = decode_image(
            read_uri(uri, settings), max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )
    except (CxrError, OSError) as exc:
        log.warning("no thumbnail for %s: %s", uri, exc)
        return None
    image = Image.fromarray((decoded.pixels * 255).astype("uint8"), "L")
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return _png_data_uri(buffer.getvalue(), "image/jpeg")


def _overlays(settings: Settings, job: Job, sha256s: list[str]) -> dict[str, str]:
    """Overlay PNG URIs of these images for the job's model version, where explanations exist."""
    prefix = f"/{job.model_name}/{job.model_version}/"
    with session_scope(settings) as session:
        rows = (
            session.query(Artifact.image_sha256, Artifact.uri)
            .filter(Artifact.kind == "overlay", Artifact.image_sha256.in_(sha256s))
            .all()
        )
    return {sha: uri for sha, uri in rows if prefix in uri}


def _gallery(settings: Settings, job: Job, rows: list[ImageRow]) -> str:
    positives = sorted(
        (r for r in rows if r.label and is_positive(r.label) and r.confidence is not None),
        key=lambda r: r.confidence or 0.0,
        reverse=True,
    )[:GALLERY_SIZE]
    if not positives:
        return "<p>No image was predicted positive.</p>"
    overlays = _overlays(settings, job, [r.sha256 for r in positives if r.sha256])
    cards = []
    for row in positives:
        thumb = _thumbnail(row.uri, settings)
        overlay_uri = overlays.get(row.sha256 or "")
        overlay = None
        if overlay_uri:
            try:
                overlay = _png_data_uri(read_uri(overlay_uri, settings))
            except CxrError as exc:
                log.warning("overlay %s unreadable: %s", overlay_uri, exc)
        pictures = "".join(
            f'<img src="{src}" alt="{alt}" title="{alt}">'
            for src, alt in ((thumb, "X-ray"), (overlay, "heatmap overlay"))
            if src
        )
        cards.append(
            f"<figure>{pictures}<figcaption><b>{html.escape(row.label or '')}</b> "
            f"{row.confidence:.3f}<br><small>{html.escape(row.uri.rsplit('/', 1)[-1])}</small>"
            "</figcaption></figure>"
        )
    return '<div class="gallery">' + "".join(cards) + "</div>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}
.warn{background:#fdecea;border:1px solid #c0392b;padding:.6em 1em;border-radius:4px}
.shift{background:#fff4e5;border:2px solid #e67e22;padding:.8em 1em;border-radius:4px;font-size:1.1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:1em}.gallery figure{margin:0;border:1px solid #ddd;padding:.4em}
.gallery img{height:192px;margin-right:.2em}
"""


def render_html(settings: Settings, job_id: str) -> str:
    summary = job_summary(settings, job_id)
    job_row = get_job(settings, job_id)
    manifest = open_model_store(settings).manifest(job_row.model_name, job_row.model_version)
    rows = list(image_rows(settings, job_id))
    counts = "".join(
        f"<tr><th>{name}</th><td>{summary[name]}</td></tr>"
        for name in ("total", "scored", "skipped", "failed")
    )
    failures = "".join(
        f"<tr><td>{count}</td><td>{html.escape(reason)}</td></tr>"
        for reason, count in summary["failures_by_reason"].items()
    )
    metrics = "".join(
        f"<li>{html.escape(m.dataset)} (n={m.n}): "
        + ", ".join(f"{k} {v:.3f}" for k, v in m.values.items() if isinstance(v, int | float))
        + "</li>"
        for m in manifest.metrics
    )
    chart = (
        f'<img src="{_label_chart(summary["by_label"])}" alt="label chart">' if summary["by_label"] else ""
    )
    label_table = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in summary["by_label"].items()
    )
    failure_table = (
        f"<table><tr><th>images</th><th>reason</th></tr>{failures}</table>" if failures else "<p>None.</p>"
    )
    skips = "".join(
        f"<tr><td>{count}</td><td>{html.escape(reason)}</td></tr>"
        for reason, count in summary["skipped_by_reason"].items()
    )
    if skips:
        failure_table += (
            f"<h3>Skipped (not failures)</h3><table><tr><th>images</th><th>reason</th></tr>{skips}</table>"
        )
    contract = manifest.input
    card = (
        f"<li>{html.escape(manifest.ref)} · {html.escape(manifest.architecture)} · classes "
        f"{html.escape(', '.join(manifest.classes))}</li>"
        f"<li>input {contract.height}×{contract.width}×{contract.channels}, {contract.normalization}</li>"
        f"<li>sha256 <code>{manifest.sha256}</code></li>{metrics}"
        f"<li>{html.escape(manifest.intended_use)}</li>"
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>cxr job {html.escape(job_id)}</title><style>{_STYLE}</style></head><body>
<h1>Scoring job {html.escape(job_id)}</h1>
{_shift_banner(summary)}
<p class="warn"><b>{html.escape(INTENDED_USE)}</b> These outputs are research results from a model
trained on small public datasets; they are not diagnoses.</p>
<p>Source <code>{html.escape(summary["source"])}</code> · model <code>{html.escape(summary["model"])}</code>
· status {summary["status"]} · {summary["images_per_second"]} images/s</p>{_frozen_note(summary)}
<h2>Counts</h2><table>{counts}</table>
<h2>Label distribution</h2>{chart}<table>{label_table}</table>
<h2>Most confident positives</h2>{_gallery(settings, job_row, rows)}
<h2>Like the training data?</h2>{_shift_section(summary)}
<h2>Shortcut score</h2>{_shortcut_section(settings, job_row, summary)}
<h2>Failures by reason</h2>{failure_table}
<h2>Model card</h2><ul>{card}</ul>
</body></html>"""


def _shift_banner(summary: dict[str, Any]) -> str:
    """The report opens with this when the archive does not look like the training data."""
    shift = summary.get("shift")
    if not shift or not shift["shifted"]:
        return ""
    message = html.escape(shift["message"])
    return f'<p class="shift" id="shift-banner"><b>Out of the model\'s depth.</b> {message}</p>'


def _shift_section(summary: dict[str, Any]) -> str:
    shift = summary.get("shift")
    if not shift:
        return "<p>This model ships no reference of its training data: shift cannot be measured.</p>"
    share = "n/a" if shift["share"] is None else f"{shift['share']:.1%}"
    verdict = "does <b>not</b> look like" if shift["shifted"] else "looks like"
    return (
        f"<p>{shift['flagged']} of {shift['scored']} scored films ({share}) lie beyond the "
        f"{shift['threshold_percentile']:g}th percentile of the validation split's shift scores; films like "
        f"the validation split would be flagged at {shift['expected_share']:.1%}. The archive {verdict} "
        "the training data (a binomial test of the flagged share and a Mann-Whitney test of the scores "
        "against the validation split's, together at α = 0.001).</p>"
    )


def _frozen_note(summary: dict[str, Any]) -> str:
    """A cancelled job is frozen at its cancel: chunks that were still running discard their
    results, so the counts shown are final, and the page says when they were taken."""
    if summary["status"] != "cancelled":
        return ""
    return (
        f'<p class="warn">Cancelled at {html.escape(str(summary["finished_at"]))}: the counts are those at '
        "cancel time and are final (chunks still running then discarded their results). Score the "
        "source again to cover the rest: what was scored is skipped.</p>"
    )


def write_report(settings: Settings, job_id: str, local_path: Path | None = None) -> dict[str, Any]:
    """Write the CSV and HTML to object storage (and the HTML to ``local_path``); record the URI."""
    job = get_job(settings, job_id)
    manifest = open_model_store(settings).manifest(job.model_name, job.model_version)
    store = open_store(settings=settings)
    csv_uri = store.put(
        f"reports/jobs/{job_id}/results.csv", write_csv(settings, job_id, manifest), "text/csv"
    )
    page = render_html(settings, job_id).encode("utf-8")
    html_uri = store.put(f"reports/jobs/{job_id}/report.html", page, "text/html")
    if local_path is not None:
        _write_local(local_path, page)
    with session_scope(settings) as session:
        row = session.get(Job, job_id)
        row.report_uri, row.csv_uri = html_uri, csv_uri
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
    """Write the job's per-image CSV (built now from SQL) to ``path``; returns the rows written."""
    job = get_job(settings, job_id)
    data = write_csv(settings, job_id, open_model_store(settings).manifest(job.model_name, job.model_version))
    _write_local(path, data)
    return max(data.count(b"\n") - 1, 0)
