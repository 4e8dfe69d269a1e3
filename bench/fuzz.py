"""A longer decoder-fuzzing campaign than CI runs, with the same inputs and oracle.

    python -m bench.fuzz --examples 20000 --seed 1 --json bench/results/fuzz.json

CI (``tests/unit/test_decode_fuzz.py``) runs a few thousand deterministic cases; this runs as
many as asked from a chosen seed, keeps going past a crash (so one campaign lists all of them,
not only the first) and reports cases run, time, outcomes (pixels, or ImageError counted by the
reason's prefix) and every distinct crash with its smallest input, as text and JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed

from tests.fuzz_corpus import MEMORY_LIMIT_BYTES, TIME_LIMIT_S, fuzz_inputs, run_case


def campaign(examples: int, seed: int) -> dict[str, Any]:
    """Run ``examples`` cases; the figures as a JSON-ready dict."""
    outcomes: collections.Counter[str] = collections.Counter()
    crashes: dict[str, dict[str, Any]] = {}
    slowest, peak = 0.0, 0

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=["generate"],  # no shrinking: crashes are recorded, not raised
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzz_inputs())
    def one(data: bytes) -> None:
        nonlocal slowest, peak
        outcome = run_case(data)
        slowest, peak = max(slowest, outcome.seconds), max(peak, outcome.peak_bytes)
        if outcome.kind == "refused":
            outcomes[f"ImageError: {outcome.reason_prefix}"] += 1
        else:
            outcomes[outcome.kind] += 1
        if (
            outcome.kind == "crash"
            or outcome.seconds > TIME_LIMIT_S
            or outcome.peak_bytes > MEMORY_LIMIT_BYTES
        ):
            over = f"limit: {outcome.reason_prefix or outcome.kind}"
            key = outcome.crash_site if outcome.kind == "crash" else over
            known = crashes.get(key)
            if known is None or len(data) < known["bytes"]:
                crashes[key] = {
                    "reason": outcome.reason[:300],
                    "bytes": len(data),
                    "input_hex": data[:4096].hex(),
                    "seconds": round(outcome.seconds, 3),
                    "peak_mib": round(outcome.peak_bytes / 2**20, 1),
                    "count": (known or {}).get("count", 0) + 1,
                }
            else:
                known["count"] += 1

    started = time.perf_counter()
    one()
    elapsed = time.perf_counter() - started
    return {
        "examples": examples,
        "cases": sum(outcomes.values()),
        "seed": seed,
        "seconds": round(elapsed, 1),
        "slowest_case_s": round(slowest, 3),
        "peak_traced_mib": round(peak / 2**20, 1),
        "outcomes": dict(outcomes.most_common()),
        "crashes": crashes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20_000, help="cases to run")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (same seed, same cases)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    report = campaign(args.examples, args.seed)
    print(
        f"{report['cases']} cases in {report['seconds']} s (seed {report['seed']}), slowest case "
        f"{report['slowest_case_s']} s, peak traced memory {report['peak_traced_mib']} MiB"
    )
    for name, count in report["outcomes"].items():
        print(f"{count:8d}  {name}")
    for key, crash in report["crashes"].items():
        print(f"CRASH ×{crash['count']} ({crash['bytes']} bytes): {key}\n    {crash['reason']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if report["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
