"""Decoder fuzzing: for any bytes, valid pixels or an ImageError, in bounded time and memory.

About 3 000 deterministic cases (``derandomize``: the same cases on every run and machine), in
three tests so that a failure names the family of inputs. Inputs, oracle and limits live in
``tests/fuzz_corpus.py``, shared with the longer campaign ``python -m bench.fuzz``. A crash
found here is shrunk by Hypothesis to a small input: add it to ``test_decode_regressions.py``
and fix it at its source.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz_corpus import (
    TIME_LIMIT_S,
    VALID_SEEDS,
    check,
    dicom_with_lying_header,
    jpeg_with_lying_header,
    mutated,
    png_with_lying_header,
    seed_bytes,
    seeds,
)

#: About 20 s on the idle 2-core machine (40 s when others load it): ``slow``, yet in the default suite.
pytestmark = pytest.mark.slow

FUZZ = settings(
    derandomize=True,  # CI is deterministic; bench/fuzz.py explores other seeds
    database=None,  # nothing written to .hypothesis/ on CI
    deadline=TIME_LIMIT_S * 1000,  # the per-case time bound, which check() also asserts
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,  # a failure prints the blob that reproduces it exactly
)


def test_every_valid_seed_decodes_to_pixels():
    """Guards the corpus: a seed that silently stopped decoding would leave its format unfuzzed."""
    for name in VALID_SEEDS:
        assert check(seeds()[name]).kind == "pixels", name


def test_every_seed_is_pixels_or_a_reason():
    for name, data in seeds().items():
        assert check(data).kind in ("pixels", "refused"), name


@settings(FUZZ, max_examples=1600)
@given(mutated(seed_bytes()))
def test_byte_mutations_of_the_seeds(data: bytes):
    check(data)


@settings(FUZZ, max_examples=500)
@given(png_with_lying_header() | jpeg_with_lying_header())
def test_png_and_jpeg_headers_that_lie(data: bytes):
    check(data)


@settings(FUZZ, max_examples=900)
@given(dicom_with_lying_header() | mutated(dicom_with_lying_header()))
def test_dicom_headers_and_luts_that_lie(data: bytes):
    check(data)
