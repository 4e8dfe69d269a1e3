"""``cxr jobs``: list, inspect, follow, report on and cancel scoring jobs; export their results as
DICOM SR."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.table import Table

from cxr.cli.common import emit_json, handle_errors, json_option, ready_settings


@click.group()
def jobs() -> None:
    """List, show, wait for, report on, export and cancel scoring jobs."""


@jobs.command("list")
@click.option("--limit", type=int, default=20, show_default=True)
@json_option
@handle_errors
def list_jobs(limit: int, as_json: bool) -> None:
    """The most recent jobs."""
    from sqlalchemy import select

    from cxr.core.db.models import Job
    from cxr.core.db.session import session_scope

    with session_scope(ready_settings()) as session:
        rows = [
            {
                "job_id": j.id, "status": j.status.value, "model": f"{j.model_name}@{j.model_version}",
                "source": j.source, "total": j.total, "scored": j.scored, "skipped": j.skipped,
                "failed": j.failed, "created_at": j.created_at.isoformat(),
            }
            for j in session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit))
        ]  # fmt: skip
    if as_json:
        emit_json({"jobs": rows})
        return
    # The id is what `jobs show` needs and the status what a reader looks for: neither is ever cut;
    # the source wraps instead (rich shrinks every column to fit 80 columns or a pipe otherwise).
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("job", no_wrap=True, min_width=16)
    table.add_column("status", no_wrap=True)
    table.add_column("model", no_wrap=True)
    for name in ("total", "scored", "skipped", "failed"):
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    table.add_column("created", no_wrap=True)
    table.add_column("source", overflow="fold")
    for r in rows:
        table.add_row(
            r["job_id"], r["status"], r["model"],
            *(str(r[k]) for k in ("total", "scored", "skipped", "failed")),
            r["created_at"][:16].replace("T", " "), r["source"],
        )  # fmt: skip
    # In a pipe rich would assume 80 columns and cut: print wide there, whole ids and all.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table if rows else "no jobs yet: cxr score SOURCE --model NAME@ALIAS")


@jobs.command()
@click.argument("job_id")
@json_option
@handle_errors
def show(job_id: str, as_json: bool) -> None:
    """A job's counters, labels and failures."""
    from cxr.cli.score_cmd import print_summary
    from scheduler.summary import job_summary

    summary = job_summary(ready_settings(), job_id)
    if as_json:
        emit_json(summary)
    else:
        print_summary(summary)


@jobs.command()
@click.argument("job_id")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a copy of the HTML report here.")  # fmt: skip
@click.option("--rebuild", is_flag=True, help="Write it again from SQL even if one is stored.")
@json_option
@handle_errors
def report(job_id: str, out: Path | None, rebuild: bool, as_json: bool) -> None:
    """The job's HTML report and per-image CSV in object storage (written now if missing)."""
    from scheduler.report import ensure_report

    files = ensure_report(ready_settings(), job_id, out, rebuild=rebuild)
    if as_json:
        emit_json({"job_id": job_id, **files})
        return
    click.echo(f"report: {files['html']}")
    click.echo(f"per-image CSV: {files['csv']}")
    if out is not None:
        click.echo(f"copy: {out}")


@jobs.command()
@click.argument("job_id")
@click.option("--csv", "csv_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the per-image CSV.")  # fmt: skip
@json_option
@handle_errors
def export(job_id: str, csv_path: Path, as_json: bool) -> None:
    """Write the job's per-image results (one row per image) as CSV."""
    from scheduler.report import export_csv

    rows = export_csv(ready_settings(), job_id, csv_path)
    if as_json:
        emit_json({"job_id": job_id, "csv": str(csv_path), "rows": rows})
    else:
        click.echo(f"{rows} images -> {csv_path}")


@jobs.command()
@click.argument("job_id")
@json_option
@handle_errors
def wait(job_id: str, as_json: bool) -> None:
    """Follow a job to its end with a progress bar, then summarise it.

    Exit status: 0 finished, 1 cancelled or failed, 3 finished with no image at all.
    """
    from cxr.cli.score_cmd import finish_waiting
    from scheduler.progress import wait_for_job

    settings = ready_settings()
    final = wait_for_job(settings, job_id, quiet=as_json)
    finish_waiting(settings, job_id, final, None, as_json)


@jobs.command()
@click.argument("job_id")
@json_option
@handle_errors
def cancel(job_id: str, as_json: bool) -> None:
    """Stop a job: workers skip its remaining chunks."""
    from scheduler.submit import cancel as cancel_job

    cancelled = cancel_job(ready_settings(), job_id)
    if as_json:
        emit_json({"job_id": job_id, "cancelled": cancelled})
    else:
        click.echo(f"job {job_id} cancelled" if cancelled else f"job {job_id} had already ended")


@jobs.command()
@click.argument("job_id")
@click.option("--n", "n", type=click.IntRange(min=1), default=50, show_default=True, help="Films to pick.")
@click.option(
    "--strategy",
    type=click.Choice(["uncertain", "diverse", "stratified", "random"]),
    default="uncertain",
    show_default=True,
    help="uncertain: smallest margin between the top two classes; diverse: k-center greedy on the "
    "model's pooled features; stratified: equal shares of each predicted label; random.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Manifest template (CSV).")
@click.option("--sheet", type=click.Path(dir_okay=False), default=None, help="Contact sheet (HTML).")
@click.option("--site", default="", help="Value of the template's site column.")
@json_option
@handle_errors
def sample(
    job_id: str, n: int, strategy: str, seed: int, out: str, sheet: str | None, site: str, as_json: bool
) -> None:
    """Pick N films of a scored job to label: writes path,label,patient_id,site with label empty."""
    from pathlib import Path

    from scheduler.sampling import sample_job

    result = sample_job(
        ready_settings(), job_id, n, strategy,  # type: ignore[arg-type]  # click.Choice has checked it
        seed=seed, out=Path(out), sheet=Path(sheet) if sheet else None, site=site,
    )  # fmt: skip
    if as_json:
        emit_json({"job_id": job_id, "strategy": strategy, "seed": seed, "candidates": result.candidates,
                   "picked": len(result.picked), "out": out, "sheet": sheet,
                   "films": [p.uri for p in result.picked]})  # fmt: skip
        return
    click.echo(f"picked {len(result.picked)} of {result.candidates} films ({strategy}, seed {seed}) -> {out}")
    if sheet:
        click.echo(f"contact sheet {sheet}")
    click.echo("fill in label (and patient_id), then: cxr evaluate --model MODEL --data " + out)


@jobs.command("export-dicom")
@click.argument("job_id")
@click.option(
    "--write-back",
    is_flag=True,
    help="Also send the SR objects to the job's dicomweb:// PACS (STOW-RS), into each source study.",
)
@json_option
@handle_errors
def export_dicom(job_id: str, write_back: bool, as_json: bool) -> None:
    """A DICOM SR per scored DICOM image, and its Grad-CAM overlay as a Secondary Capture when the
    job explained it (research results, not for diagnostic use)."""
    from scheduler.dicom_export import export_job

    result = export_job(ready_settings(), job_id, write_back=write_back)
    if as_json:
        counts = {"written": result.written, "sent": result.sent, "not_dicom": result.skipped}
        emit_json({"job_id": job_id, **counts, "unusable": result.unusable, "keys": result.keys,
                   "overlay_keys": result.overlay_keys})  # fmt: skip
        return
    overlays = len(result.overlay_keys)
    click.echo(f"{result.written} SR and {overlays} overlay SC objects under reports/jobs/{job_id}/dicom/"
               + (f", {result.sent} sent to the PACS" if write_back else ""))  # fmt: skip
    if result.skipped:
        click.echo(f"{result.skipped} scored images are not DICOM: no SR for them")
    if result.unusable:
        click.echo(f"{result.unusable} DICOM headers cannot be referenced by an SR (see the log)")
