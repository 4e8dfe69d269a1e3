"""``cxr score``: the main job. Bulk-score an archive with a pinned model version."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from cxr.cli.common import emit_json, handle_errors, json_option, ready_settings
from cxr.core.settings import Settings
from cxr.explain.methods import EXPLAIN_MODES, METHODS  # NumPy only

if TYPE_CHECKING:
    from cxr.core.db.models import JobStatus


@click.command()
@click.argument("source")
@click.option("--model", "model_ref", required=True, help="NAME@ALIAS, NAME@VERSION or NAME@latest.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Images per task (default CXR_CHUNK_SIZE).")  # fmt: skip
@click.option("--explain", type=click.Choice(EXPLAIN_MODES), default="none", show_default=True,
              help="Which images get a heatmap, overlay and regions of interest.")  # fmt: skip
@click.option("--explain-method", type=click.Choice(list(METHODS)),
              default="gradcam", show_default=True)  # fmt: skip
@click.option("--wait/--no-wait", default=False, help="Follow the job to its end, then summarise.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the HTML report here (it always goes to object storage).")  # fmt: skip
@json_option
@handle_errors
def score(
    source: str, model_ref: str, chunk_size: int | None, explain: str, explain_method: str, wait: bool,
    report_path: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """Score every image under SOURCE: a folder (recursive), s3://bucket/prefix, or a list file.

    Running the same command again resumes an unfinished job: only what is missing is scored.
    Without a broker (CXR_BROKER_URL unset) the job runs in this process. A finished job writes
    its report and CSV itself (`cxr jobs show ID` prints where).
    Exit status with --wait: 0 finished, 1 cancelled or failed, 3 no image found.
    """
    from scheduler.progress import wait_for_job
    from scheduler.submit import submit

    settings = ready_settings()
    console = Console(stderr=True, quiet=as_json)
    with console.status("walking the source and sending chunks…") as status:

        def progress(walked: int, sent: int) -> None:
            status.update(f"{walked} images walked, {sent} chunks sent")

        submitted = submit(
            settings, source, model_ref, chunk_size=chunk_size, explain=explain,  # type: ignore[arg-type]
            explain_method=explain_method, on_progress=progress,
        )  # fmt: skip
    verb = "resumed" if submitted.resumed else "submitted"
    console.print(
        f"{verb} job [bold]{submitted.job_id}[/] with {submitted.model.ref}: {submitted.total} images"
    )

    if not settings.in_process and not wait:
        console.print(f"follow it with: cxr jobs show {submitted.job_id}")
        if as_json:
            emit_json(
                {
                    "job_id": submitted.job_id, "model": submitted.model.ref, "total": submitted.total,
                    "resumed": submitted.resumed, "chunks_sent": submitted.chunks_sent,
                }
            )  # fmt: skip
        if submitted.total == 0:
            _warn_empty(submitted.job_id, source)
            sys.exit(EXIT_EMPTY)
        return
    final = wait_for_job(settings, submitted.job_id, quiet=as_json)
    finish_waiting(settings, submitted.job_id, final, report_path, as_json)


#: Exit status of a job that finished without a single image (an empty folder, a wrong prefix).
EXIT_EMPTY = 3


def finish_waiting(
    settings: Settings, job_id: str, final: JobStatus, report_path: Path | None, as_json: bool
) -> None:
    """After following a job to its end (``score --wait``, ``jobs wait``): its report (the
    stored one, or written now), the summary, and the exit status: 0 finished, 1 cancelled or
    failed, 3 finished with no image."""
    from cxr.core.db.models import JobStatus
    from scheduler.report import ensure_report
    from scheduler.summary import job_summary

    report = ensure_report(settings, job_id, report_path)
    summary = job_summary(settings, job_id)
    summary["report_files"] = report
    if as_json:
        emit_json(summary)
    else:
        print_summary(summary)
    if final != JobStatus.FINISHED:
        sys.exit(1)
    if summary["total"] == 0:
        _warn_empty(job_id, summary["source"])
        sys.exit(EXIT_EMPTY)


def _warn_empty(job_id: str, source: str) -> None:
    message = f"warning: job {job_id} found no image in {source}: check the path or prefix"
    click.secho(message, fg="yellow", err=True)


def print_summary(summary: dict) -> None:
    click.echo(
        f"job {summary['job_id']} {summary['status']}: {summary['total']} images, "
        f"{summary['scored']} scored, {summary['skipped']} skipped, "
        f"{summary['failed']} failed"
    )
    click.echo(
        f"model {summary['model']} · {summary['images_per_second']} images/s over {summary['seconds']} s"
    )
    if summary.get("error"):
        click.echo(f"error: {summary['error']}")
    for label, count in summary["by_label"].items():
        click.echo(f"  {label:<12} {count}")
    if summary["skipped_by_reason"]:
        click.echo("skipped:")
        for reason, count in summary["skipped_by_reason"].items():
            click.echo(f"  {count:>5} × {reason}")
    if summary["failures_by_reason"]:
        click.echo("failures:")
        for reason, count in summary["failures_by_reason"].items():
            click.echo(f"  {count:>5} × {reason}")
    shift = summary.get("shift")
    if shift and shift["shifted"]:
        click.secho(f"WARNING: {shift['message']}", fg="yellow", err=True)
    elif shift:
        click.echo(
            f"shift: {shift['flagged']} of {shift['scored']} flagged as unlike the training data "
            f"(expected {shift['expected_share']:.1%}): the archive looks like the training data"
        )
    files = summary.get("report_files") or {}
    pending = f"not written yet (cxr jobs report {summary['job_id']})"
    click.echo(f"report: {files.get('local') or files.get('html') or summary.get('report') or pending}")
    click.echo(f"per-image CSV: {files.get('csv') or summary.get('csv') or pending}")
    click.echo("research use only — not for clinical decisions")
