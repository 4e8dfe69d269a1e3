"""Watching a job until it ends, with a progress bar on the terminal (stderr)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cxr.core.db.models import JobStatus
from cxr.core.settings import Settings
from scheduler.summary import get_job

FINAL = (JobStatus.FINISHED, JobStatus.CANCELLED, JobStatus.FAILED)


def wait_for_job(settings: Settings, job_id: str, poll_s: float = 0.5, quiet: bool = False) -> JobStatus:
    """Poll the job's counters until it is finished, cancelled or failed."""
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    ) as progress:
        task = progress.add_task(f"job {job_id}", total=None, detail="")
        while True:
            job = get_job(settings, job_id)
            done = job.scored + job.skipped + job.failed
            total = job.total if job.status != JobStatus.PENDING else None
            progress.update(
                task,
                completed=done,
                total=total,
                detail=f"scored {job.scored} · skipped {job.skipped} · failed {job.failed}",
            )
            if job.status in FINAL:
                return job.status
            time.sleep(poll_s)
