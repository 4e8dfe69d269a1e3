"""Decode + preprocess CPU time per hospital-sized film, per format, against the forward pass.

    python -m bench.decode_cost --per-format 4 --rounds 3 --out bench/results/decode-fullres.json

For each format of the full-resolution corpus (``bench/corpus.py``; written to a scratch folder
unless ``--corpus`` names one) this times ``decode_image`` + ``preprocess`` per film at full size
(``slow``: no target side, what every path did before reduced decoding) and reduced by the
contract's decode-scale rule (``fast``: what the worker, training and explanations do now), and
in the same run the MobileNetV2@224 forward pass per image (random weights, batch 8, one thread),
so each format's cost is also a ratio to the model's. Everything runs on one thread (TensorFlow,
OpenCV) and is timed in CPU time (``time.process_time``), in interleaved rounds, medians
reported: the development machine is shared, and its speed drifts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LIMITS = {"max_bytes": 1 << 27, "max_pixels": 60_000_000}
BATCH = 8


def _one_thread() -> None:
    import cv2
    import tensorflow as tf

    cv2.setNumThreads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def make_forward(size: int) -> Any:
    """MobileNetV2 (random weights) compiled as the worker runs it, traced at batch 8."""
    import keras

    from modelstore.runtime import compile_forward

    model = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), classes=3)
    forward = compile_forward(model, (size, size, 3))
    forward(np.zeros((BATCH, size, size, 3), np.float32))
    return forward


def forward_ms(forward: Any, size: int, batches: int) -> float:
    batch = np.random.default_rng(0).random((BATCH, size, size, 3), dtype=np.float32) * 2 - 1
    started = time.process_time()
    for _ in range(batches):
        forward(batch)
    return (time.process_time() - started) * 1000 / (batches * BATCH)


def decode_ms(files: list[bytes], contract: Any, target_side: int | None) -> float:
    from cxr.core.imaging import decode_image, preprocess

    started = time.process_time()
    for data in files:
        preprocess(decode_image(data, target_side=target_side, **LIMITS).pixels, contract)
    return (time.process_time() - started) * 1000 / len(files)


def read_corpus(root: Path) -> dict[str, list[bytes]]:
    by_format: dict[str, list[bytes]] = {}
    with (root / "manifest.csv").open() as stream:
        for row in csv.DictReader(stream):
            by_format.setdefault(row["format"], []).append((root / row["path"]).read_bytes())
    return by_format


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from bench.corpus import write_corpus
    from cxr.core.imaging import InputContract

    _one_thread()
    contract = InputContract(height=args.size, width=args.size, channels=3, normalization="symmetric")
    with tempfile.TemporaryDirectory(prefix="cxr-fullres-") as scratch:
        root = args.corpus or Path(scratch)
        if args.corpus is None:
            write_corpus(root, args.per_format, formats=args.formats)
        corpus = read_corpus(root)
        with (root / "manifest.csv").open() as stream:
            sizes = sorted({f"{row['height']}x{row['width']}" for row in csv.DictReader(stream)})
    forward = make_forward(args.size)
    samples: dict[str, list[float]] = {"forward": []}
    for name, files in corpus.items():
        samples[f"{name}/slow"], samples[f"{name}/fast"] = [], []
        decode_ms(files[:1], contract, None)  # imports and first-use setup stay out of the figures
        decode_ms(files[:1], contract, contract.decode_side)
    for _ in range(args.rounds):
        samples["forward"].append(forward_ms(forward, args.size, args.forward_batches))
        for name, files in corpus.items():
            samples[f"{name}/slow"].append(decode_ms(files, contract, None))
            samples[f"{name}/fast"].append(decode_ms(files, contract, contract.decode_side))
    median = {key: statistics.median(values) for key, values in samples.items()}
    per_format = {
        name: {
            "files": len(files),
            "mean_bytes": int(np.mean([len(data) for data in files])),
            "slow_ms": round(median[f"{name}/slow"], 2),
            "fast_ms": round(median[f"{name}/fast"], 2),
            "slow_ratio": round(median[f"{name}/slow"] / median["forward"], 3),
            "fast_ratio": round(median[f"{name}/fast"] / median["forward"], 3),
        }
        for name, files in corpus.items()
    }
    return {
        "model": f"mobilenetv2@{args.size}",
        "forward_ms_per_image": round(median["forward"], 2),
        "batch": BATCH,
        "threads": 1,
        "rounds": args.rounds,
        "film_sizes": sizes,
        "decode_side": contract.decode_side,
        "cpu": os.cpu_count(),
        "formats": per_format,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"forward pass: {result['forward_ms_per_image']} CPU-ms per image ({result['model']}, batch "
        f"{result['batch']}, one thread); films {', '.join(result['film_sizes'])}",
        "",
        "| format | MB | full-size decode ms (× forward) | reduced decode ms (× forward) |",
        "|---|---:|---:|---:|",
    ]
    for name, row in result["formats"].items():
        lines.append(
            f"| {name} | {row['mean_bytes'] / 1e6:.1f} | {row['slow_ms']:.1f} ({row['slow_ratio']:.2f}×) "
            f"| {row['fast_ms']:.1f} ({row['fast_ratio']:.2f}×) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--corpus", type=Path, help="a corpus folder (bench/corpus.py); default: write one")
    parser.add_argument("--per-format", type=int, default=4)
    parser.add_argument("--formats", nargs="*")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forward-batches", type=int, default=4)
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    result = measure(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
