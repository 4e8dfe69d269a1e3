"""The bare-pass benchmark counts only images it ran: a batch larger than the set of distinct
tensors is filled by repeating them, never cut short (16 full-resolution films at batch 32 once
reported three times the real rate)."""

from __future__ import annotations

import numpy as np

from bench.bare import timed_loop


def test_every_batch_is_full_even_with_fewer_tensors_than_a_batch():
    seen: list[int] = []
    tensors = np.zeros((16, 2, 2, 1), np.float32)
    done, seconds = timed_loop(lambda batch: seen.append(len(batch)), tensors, 32, 96)
    assert done == 96 and seconds >= 0
    assert seen == [32] * 4  # the warm-up call and three timed ones


def test_batches_cycle_over_the_distinct_tensors():
    seen: list[np.ndarray] = []
    tensors = np.arange(10, dtype=np.float32).reshape(10, 1)
    timed_loop(lambda batch: seen.append(batch[:, 0].copy()), tensors, 4, 12)
    assert all(len(batch) == 4 for batch in seen)
    assert {int(value) for batch in seen for value in batch} <= set(range(10))
