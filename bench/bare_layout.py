"""The bare forward pass in a worker's process layout: P processes of T TensorFlow threads each.

A prefork worker with ``--concurrency P`` runs P model processes, each sized to cores ÷ P
threads (``worker.lifecycle``). On a small CPU that layout is itself faster than one process
using every core, so comparing the worker with a single process alone would flatter the worker:
the benchmark reports the bare pass in both layouts and the worker against each.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Distinct tensors handed to each process (cycled): the forward pass does not depend on them.
_TENSORS = 128


def _forward_loop(
    model_path: str, tensors_path: str, batch_size: int, images: int, threads: int, barrier: Any, results: Any
) -> None:
    """One process: size TensorFlow's pools, load and trace, wait for the others, then time."""
    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[variable] = str(threads)
    from modelstore.loading import load_keras_model
    from worker.model_cache import compile_forward

    tensors = np.load(tensors_path)
    forward = compile_forward(load_keras_model(Path(model_path)), tensors.shape[1:])
    forward(tensors[:batch_size])
    barrier.wait()
    started = time.perf_counter()
    done = 0
    while done < images:
        start = done % len(tensors)
        batch = tensors[start : start + batch_size]
        forward(batch)
        done += len(batch)
    results.put((done, time.perf_counter() - started))


def bare_layout_ips(
    model_path: Path,
    tensors: np.ndarray,
    batch_size: int,
    processes: int,
    threads: int,
    images: int,
    workdir: Path,
) -> float:
    """Images per second of ``processes`` forward loops running at once, ``images`` in all."""
    tensors_path = workdir / "bare-layout-tensors.npy"
    np.save(tensors_path, tensors[: max(batch_size, _TENSORS)])
    context = multiprocessing.get_context("spawn")  # a fresh TensorFlow in each process
    barrier, results = context.Barrier(processes), context.Queue()
    share = -(-images // processes)
    workers = [
        context.Process(
            target=_forward_loop,
            args=(str(model_path), str(tensors_path), batch_size, share, threads, barrier, results),
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(done for done, _ in outcomes) / max(seconds for _, seconds in outcomes)
