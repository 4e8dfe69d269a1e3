"""The bare forward pass: the compiled model on already preprocessed tensors, nothing else.

It is timed in two layouts, each over a sweep of batch sizes, and the fastest size of each is
the reference the worker is compared with:

- one process using TensorFlow's default thread pools (every core);
- the worker's layout: P processes of cores ÷ P threads each, as a prefork worker with
  ``--concurrency P`` runs (``worker.lifecycle``). On a small CPU this layout is itself faster,
  so comparing the worker with the single process alone would flatter the worker.

Batch size matters on a CPU: a small batch keeps a layer's activations in cache, and on the
2-core development machine MobileNetV2 used about 11 % less CPU per image in batches of 8 than 32.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Forward = Callable[[np.ndarray], Any]


def make_forward(model_path: Path, batch_size: int) -> Forward:
    """The compiled forward pass the worker uses, loaded in safe mode and traced once."""
    from modelstore.loading import load_keras_model
    from modelstore.runtime import compile_forward

    model = load_keras_model(model_path)
    shape = tuple(int(side) for side in model.input_shape[1:])
    forward = compile_forward(model, shape)
    forward(np.zeros((batch_size, *shape), dtype=np.float32))
    return forward


def timed_loop(forward: Forward, tensors: np.ndarray, batch_size: int, images: int) -> tuple[int, float]:
    """Run ``images`` images (cycling over ``tensors``) in batches; (images run, seconds).

    Fewer distinct tensors than a batch (16 full-resolution films, batch 32) are repeated until
    a batch is full: slicing past the end would run short batches and count them as full."""
    if len(tensors) < batch_size:
        tensors = np.concatenate([tensors] * -(-batch_size // len(tensors)))
    forward(tensors[:batch_size])  # the first call at a new batch size pays for its own setup
    started = time.perf_counter()
    done = 0
    while done < images:
        start = done % (len(tensors) - batch_size + 1)
        forward(tensors[start : start + batch_size])
        done += batch_size
    return done, time.perf_counter() - started


def sweep(forward: Forward, tensors: np.ndarray, sizes: Sequence[int], images: int) -> dict[int, float]:
    """Images per second of one process, per batch size."""
    rates = {}
    for size in sizes:
        done, seconds = timed_loop(forward, tensors, size, images)
        rates[size] = done / seconds
    return rates


def _layout_process(
    model_path: str, tensors_path: str, sizes: list[int], images: int, threads: int,
    barrier: Any, results: Any,
) -> None:  # fmt: skip
    """One process of the layout: size TensorFlow's pools, load and trace, then time each batch
    size in step with the others (a barrier before each)."""
    from worker.lifecycle import THREAD_VARIABLES

    for variable in THREAD_VARIABLES:  # forced: this process is the worker's layout, by definition
        os.environ[variable] = str(threads)
    forward = make_forward(Path(model_path), sizes[0])
    tensors = np.load(tensors_path)
    for size in sizes:
        forward(tensors[:size])
        barrier.wait()
        results.put((size, *timed_loop(forward, tensors, size, images)))


def layout_sweep(
    model_path: Path,
    tensors: np.ndarray,
    sizes: Sequence[int],
    processes: int,
    threads: int,
    images: int,
    workdir: Path,
) -> dict[int, float]:
    """Images per second of ``processes`` processes running side by side, per batch size."""
    tensors_path = workdir / "bare-layout-tensors.npy"
    np.save(tensors_path, tensors)
    context = multiprocessing.get_context("spawn")  # a fresh TensorFlow in each process
    barrier, results = context.Barrier(processes), context.Queue()
    share = -(-images // processes)
    members = [
        context.Process(
            target=_layout_process,
            args=(str(model_path), str(tensors_path), list(sizes), share, threads, barrier, results),
        )
        for _ in range(processes)
    ]
    for member in members:
        member.start()
    outcomes = [results.get(timeout=900) for _ in range(processes * len(sizes))]
    for member in members:
        member.join()
    rates = {}
    for size in sizes:
        runs = [(done, seconds) for batch, done, seconds in outcomes if batch == size]
        rates[size] = sum(done for done, _ in runs) / max(seconds for _, seconds in runs)
    return rates
