"""Watching a job until it ends, with a progress bar on the terminal (stderr)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from cxr.core.db.models import JobStatus
from cxr.core.settings import Settings
from scheduler.summary import get_job

FINAL = (JobStatus.FINISHED, JobStatus.CANCELLED, JobStatus.FAILED)


class RateColumn(ProgressColumn):
    """Items per second over rich's recent samples ("–" until there are two)."""

    def __init__(self, unit: str = "img") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text(f"– {self.unit}/s", style="progress.data.speed")
        return Text(f"{speed:.1f} {self.unit}/s", style="progress.data.speed")


def progress_columns(unit: str = "img") -> tuple[ProgressColumn, ...]:
    """The one bar layout of long work, narrow enough for 80 columns: what, bar, done/total,
    rate and time left."""
    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        RateColumn(unit),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )


class RichDisplay:
    """``cxr.core.progress.Display`` on a rich ``Progress``: one bar per step of work, live only
    while a step runs, so what runs between steps (Keras' own epoch lines) prints undisturbed;
    a finished step's bar stays on the screen."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(*progress_columns(), console=console)
        self.active = 0

    def start(self, description: str, total: int | None, unit: str) -> int:
        if self.active == 0:
            self.progress.start()
        self.active += 1
        return int(self.progress.add_task(description, total=total))

    def advance(self, bar: int, amount: int) -> None:
        self.progress.advance(TaskID(bar), amount)

    def stop(self, bar: int) -> None:
        self.progress.stop_task(TaskID(bar))
        self.active -= 1
        if self.active == 0:
            self.progress.refresh()
            self.progress.stop()
            for task in list(self.progress.task_ids):  # printed: the next step starts afresh
                self.progress.remove_task(task)


@contextlib.contextmanager
def progress_display(quiet: bool = False) -> Iterator[None]:
    """Bars on stderr (rate and ETA) for the long steps run inside the block: loading films,
    feature passes, scoring (``cxr.core.progress``). ``quiet`` (e.g. ``--json``) shows none, and
    so does a stderr that is not a terminal: a log file or a pipe gets the command's messages,
    not the residue of bars."""
    from cxr.core import progress as core_progress

    console = Console(stderr=True)
    shown = not quiet and console.is_terminal
    with core_progress.showing(RichDisplay(console) if shown else None):
        yield


def stall_advice(settings: Settings, job_id: str, stalled_s: float) -> str:
    """What to tell an operator whose job has not moved for ``stalled_s`` seconds."""
    from worker.app import queued_chunks

    queued = queued_chunks(settings)
    if queued == 0:
        return (
            f"job {job_id}: no progress for {stalled_s:.0f} s and the gpu queue is empty: its unfinished "
            "chunks were lost with the broker or are stuck; run the same `cxr score` again to re-send them"
        )
    waiting = "an unknown number of" if queued is None else str(queued)
    return (
        f"job {job_id}: no progress for {stalled_s:.0f} s with {waiting} chunks queued: is a worker "
        "running? start one with `celery -A worker worker -Q gpu`"
    )


def wait_for_job(settings: Settings, job_id: str, poll_s: float = 0.5, quiet: bool = False) -> JobStatus:
    """Poll the job's counters until it is finished, cancelled or failed; warn on stderr every
    ``CXR_WAIT_STALL_WARN_S`` seconds without progress (a broker job only)."""
    console = Console(stderr=True)
    last_done, stalled_since, warned = -1, time.monotonic(), time.monotonic()
    with Progress(
        *progress_columns(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        disable=quiet,
        transient=False,
    ) as progress:
        task = progress.add_task("scoring", total=None, detail="")
        while True:
            job = get_job(settings, job_id)
            done = job.scored + job.skipped + job.failed
            total = job.total if job.status != JobStatus.PENDING else None
            counts = ((job.skipped, "skipped"), (job.failed, "failed"))
            detail = " · ".join(f"{n} {what}" for n, what in counts if n)
            progress.update(task, completed=done, total=total, detail=detail)
            if job.status in FINAL:
                return job.status
            now = time.monotonic()
            if done != last_done:
                last_done, stalled_since, warned = done, now, now
            elif not settings.in_process and now - warned >= settings.wait_stall_warn_s:
                advice = stall_advice(settings, job_id, now - stalled_since)
                console.print(f"warning: {advice}", soft_wrap=True, markup=False, highlight=False)
                warned = now  # once per stall period
            time.sleep(poll_s)
