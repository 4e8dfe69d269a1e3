"""Explanations per second vs classifications per second, same model, same images.

    .venv/bin/python bench/explain.py [--model-arch mobilenetv2|simple] [--image-size N]
                                      [--images N] [--batch-size N] [--method gradcam] [--json]

Both paths start from decoded float32 images at an X-ray-like original size and include THE
preprocessing; classification is the model runtime's ``predict_pixels`` (what a worker runs), explanation is
``Explainer.explain`` (forward + gradients + maps + regions + shortcut score; no PNG rendering). The goal is
explain/classify ≥ 0.5: explaining every call should cost at most twice the scoring.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from cxr.core.imaging import InputContract

CLASSES = ["covid", "normal", "pneumonia"]
ORIGINAL = (512, 448)  # height, width of the synthetic radiographs


def build_model(arch: str, size: int):
    """MobileNetV2 (random weights, no download) or a small CNN, with a 3-way softmax."""
    import keras

    keras.utils.set_random_seed(0)
    if arch == "mobilenetv2":
        base = keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=None, include_top=False)
        pooled = keras.layers.GlobalAveragePooling2D()(base.output)
        return keras.Model(base.input, keras.layers.Dense(len(CLASSES), activation="softmax")(pooled))
    return keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv_last"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(CLASSES), activation="softmax"),
        ]
    )


def rate(func, count: int, repeats: int) -> float:
    """Items per second of the best of ``repeats`` timed runs, after one warm-up run."""
    func()
    best = min(_timed(func) for _ in range(repeats))
    return count / best


def _timed(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-arch", choices=["mobilenetv2", "simple"], default="mobilenetv2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--method", choices=["gradcam", "gradcam++", "feature-maps"], default="gradcam")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from cxr.explain.explainer import Explainer
    from cxr.explain.methods import make_method
    from modelstore.runtime import ModelRuntime

    contract = InputContract(
        height=args.image_size, width=args.image_size, channels=3, normalization="symmetric"
    )
    model = build_model(args.model_arch, args.image_size)
    rng = np.random.default_rng(0)
    images = [rng.random(ORIGINAL, dtype=np.float32) for _ in range(args.images)]
    output = "sigmoid" if model.outputs[0].shape[-1] == 1 else "softmax"
    runtime = ModelRuntime(model, classes=CLASSES, contract=contract, output=output, ref=args.model_arch)
    runtime.warm_up()
    explainer = Explainer(runtime, make_method(args.method, model, batch_size=args.batch_size))

    def classify() -> None:
        runtime.predict_pixels(images, batch_size=args.batch_size)

    def explain() -> None:
        explainer.explain(images)

    classify_ips = rate(classify, len(images), args.repeats)
    explain_ips = rate(explain, len(images), args.repeats)
    result = {
        "classify_ips": round(classify_ips, 3),
        "explain_ips": round(explain_ips, 3),
        "explain_over_classify": round(explain_ips / classify_ips, 3),
        "model": args.model_arch,
        "method": args.method,
        "image_size": args.image_size,
        "images": args.images,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.model_arch} {args.image_size}px, {args.images} images: classify {classify_ips:.2f}/s, "
            f"{args.method} {explain_ips:.2f}/s, ratio {explain_ips / classify_ips:.2f}"
        )
    return result


if __name__ == "__main__":
    main()
