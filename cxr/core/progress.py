"""Progress of long work, reported to whoever shows it.

Library code (dataset loading, the runtime's batched passes, the logistic heads' feature pass)
says what it is doing with ``track`` / ``batches``; it does not know whether anyone is watching.
A command line installs a display with ``showing`` (``scheduler.progress.progress_display``:
a bar on stderr with rate and ETA); with none installed, as in a worker or a test, tracking
costs one context-variable lookup and shows nothing. Nested work shows as one bar per step.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")


class Display(Protocol):
    """What a display offers: a new bar, and a way to advance and close it."""

    def start(self, description: str, total: int | None, unit: str) -> int: ...

    def advance(self, bar: int, amount: int) -> None: ...

    def stop(self, bar: int) -> None: ...


_display: contextvars.ContextVar[Display | None] = contextvars.ContextVar("cxr_progress", default=None)


@contextlib.contextmanager
def showing(display: Display | None) -> Iterator[None]:
    """Show the progress of work done in this block on ``display`` (None: show nothing)."""
    token = _display.set(display)
    try:
        yield
    finally:
        _display.reset(token)


@contextlib.contextmanager
def step(description: str, total: int | None, unit: str = "img") -> Iterator[Callable[[int], None]]:
    """A bar for one step of work; yields ``advance(amount)``."""
    display = _display.get()
    if display is None:
        yield lambda amount: None
        return
    bar = display.start(description, total, unit)
    try:
        yield lambda amount: display.advance(bar, amount)
    finally:
        display.stop(bar)


def track(items: Iterable[T], total: int | None, description: str, unit: str = "img") -> Iterator[T]:
    """``items``, one by one, advancing a bar for each."""
    with step(description, total, unit) as advance:
        for item in items:
            yield item
            advance(1)


def batches(n: int, batch_size: int, description: str, unit: str = "img") -> Iterator[int]:
    """Batch start offsets ``0, batch_size, ...`` below ``n``, advancing a bar by each batch's
    size (the usual ``range(0, n, batch_size)`` loop, watched)."""
    with step(description, n, unit) as advance:
        for start in range(0, n, batch_size):
            yield start
            advance(min(batch_size, n - start))
