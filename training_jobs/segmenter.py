"""Train the lung-field segmenter (``lung_unet``) on lung masks, split by patient, and publish it.

    python -m training_jobs.segmenter --masks ../shared/data/cxr-dev-lungmasks/manifest.csv \\
        --images ../shared/data/cxr-dev --publish

The masks' manifest pairs ``image_path`` (relative to ``--images``) with ``mask_path`` (relative
to the manifest's folder). Patients come from ``--images``/manifest.csv when it exists (films of
one patient never straddle splits); otherwise each image is its own patient. Inputs go through
THE preprocessing with the segmenter's own contract (96 px, one channel, CLAHE: exposure differs
between collections, and the segmenter must work on films it never saw); masks are resized to
the same grid. Loss: binary cross-entropy plus soft Dice; early stopping on validation loss.
Augmentation (training only): horizontal flips, a random crop of 80-100 % of the film rescaled,
brightness, contrast and gamma. Dice is reported per test image (mean and median).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxr.core.errors import ConfigurationError, ObjectNotFound
from cxr.core.imaging import InputContract, decode_image, preprocess
from cxr.core.imaging.lungs import mask_problem
from cxr.core.imaging.preprocess import resize_gray
from cxr.core.settings import Settings
from cxr.core.storage import open_store
from training_jobs.lung_unet import ARCHITECTURE, build_lung_unet
from training_jobs.splits import split_by_patient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmenterConfig:
    masks: str  # the masks' manifest CSV
    images: str  # the images' root folder
    name: str = "lungs"
    size: int = 96
    base_filters: int = 8
    epochs: int = 60
    batch_size: int = 16
    learning_rate: float = 2e-3
    patience: int = 10
    threshold: float = 0.5
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    publish: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def contract(self) -> InputContract:
        return InputContract(height=self.size, width=self.size, channels=1, normalization="unit",
                             contrast="clahe")  # fmt: skip


@dataclass
class SegmenterResult:
    dice: dict[str, float]  # per split: mean Dice at the threshold
    test_dice: list[float]
    bad_test_masks: int  # predicted test masks that ``mask_problem`` refuses
    n: dict[str, int]
    train_seconds: float
    epochs: int
    model_ref: str | None
    model: Any


def load_pairs(config: SegmenterConfig, settings: Settings) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(inputs (N, s, s, 1), masks (N, s, s, 1) in {0, 1}, patient ids).

    The masks' manifest and the images' root are local paths or ``s3://``/``file://`` URIs, read
    through the object stores as training data is (``training_jobs.datasets``); a mask's and an
    image's path are relative to the masks' manifest and to the images' root."""
    from training_jobs.datasets import source_uri

    masks_root, _, manifest_name = source_uri(config.masks).rpartition("/")
    mask_store = open_store(masks_root, settings)
    image_store = open_store(source_uri(config.images), settings)
    patients: dict[str, str] = {}
    if image_store.exists("manifest.csv"):
        text = image_store.get("manifest.csv").decode("utf-8-sig")
        patients = {row["path"]: row["patient_id"] for row in csv.DictReader(io.StringIO(text))}
    try:
        rows = list(csv.DictReader(io.StringIO(mask_store.get(manifest_name).decode("utf-8-sig"))))
    except ObjectNotFound as exc:
        raise ConfigurationError(f"no masks manifest at {config.masks}") from exc
    contract = config.contract
    inputs, masks, ids = [], [], []
    for row in rows:
        data = image_store.get(row["image_path"])
        film = decode_image(data, max_bytes=settings.max_image_bytes,
                            max_pixels=settings.max_image_pixels).pixels  # fmt: skip
        with Image.open(io.BytesIO(mask_store.get(row["mask_path"]))) as stored:
            mask = np.asarray(stored.convert("L"), np.float32) / 255.0
        if mask.shape != film.shape:
            log.warning("%s: mask %s != film %s, skipped", row["mask_path"], mask.shape, film.shape)
            continue
        inputs.append(preprocess(film, contract))
        masks.append((resize_gray(mask, contract.height, contract.width) >= 0.5)[..., None])
        ids.append(patients.get(row["image_path"], f"path:{row['image_path']}"))
    return np.stack(inputs), np.stack(masks).astype(np.float32), ids


def dice(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-image Dice of boolean masks (1 when both are empty)."""
    p, t = predicted.reshape(len(predicted), -1), truth.reshape(len(truth), -1).astype(bool)
    inter, total = (p & t).sum(1), p.sum(1) + t.sum(1)
    return np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))


def _augmented(x: np.ndarray, y: np.ndarray, config: SegmenterConfig) -> Any:
    import tensorflow as tf

    size = config.size

    def augment(image: Any, mask: Any) -> tuple[Any, Any]:
        both = tf.concat([image, mask], axis=-1)
        both = tf.image.random_flip_left_right(both)
        scale = tf.random.uniform([], 0.8, 1.0)
        top = tf.random.uniform([], 0.0, 1.0 - scale)
        left = tf.random.uniform([], 0.0, 1.0 - scale)
        box = tf.stack([top, left, top + scale, left + scale])[None]
        both = tf.image.crop_and_resize(both[None], box, [0], [size, size])[0]
        image, mask = both[..., :1], tf.cast(both[..., 1:] >= 0.5, tf.float32)
        image = tf.image.random_brightness(image, 0.1)
        image = tf.image.random_contrast(image, 0.8, 1.2)
        image = tf.clip_by_value(image, 0.0, 1.0) ** tf.random.uniform([], 0.7, 1.4)
        return image, mask

    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=config.seed)
        .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(config.batch_size)
        .prefetch(2)
    )


def _loss() -> Any:
    import keras

    bce = keras.losses.BinaryCrossentropy()

    def bce_dice(truth: Any, predicted: Any) -> Any:
        ops = keras.ops
        inter = ops.sum(truth * predicted, axis=(1, 2, 3))
        total = ops.sum(truth, axis=(1, 2, 3)) + ops.sum(predicted, axis=(1, 2, 3))
        return bce(truth, predicted) + 1.0 - ops.mean((2 * inter + 1.0) / (total + 1.0))

    return bce_dice


def train_segmenter(config: SegmenterConfig, settings: Settings) -> SegmenterResult:
    import keras

    keras.utils.set_random_seed(config.seed)
    x, y, patients = load_pairs(config, settings)
    split = split_by_patient(patients, [0] * len(patients), seed=config.seed, fractions=config.fractions)
    parts = {name: split.indices(name) for name in ("train", "val", "test")}
    log.info("lung masks: %s images (by patient)", {k: len(v) for k, v in parts.items()})
    model = build_lung_unet(config.size, config.base_filters)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=_loss())
    started = time.monotonic()
    history = model.fit(
        _augmented(x[parts["train"]], y[parts["train"]], config),
        validation_data=(x[parts["val"]], y[parts["val"]]),
        epochs=config.epochs,
        callbacks=[keras.callbacks.EarlyStopping(patience=config.patience, restore_best_weights=True)],
        verbose=2,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
    )
    train_seconds = time.monotonic() - started
    scores, bad = {}, 0
    for name, index in parts.items():
        predicted = model.predict(x[index], batch_size=32, verbose=0)[..., 0] >= config.threshold
        per_image = dice(predicted, y[index][..., 0])
        scores[name] = float(per_image.mean())
        if name == "test":
            test_dice = [float(v) for v in per_image]
            bad = sum(mask_problem(m) is not None for m in predicted)
    log.info("Dice: %s; bad predicted test masks %d/%d", scores, bad, len(parts["test"]))
    ref = _publish(config, model, scores, len(parts["test"]), settings) if config.publish else None
    return SegmenterResult(
        dice=scores, test_dice=test_dice, bad_test_masks=bad, n={k: len(v) for k, v in parts.items()},
        train_seconds=train_seconds, epochs=len(history.history["loss"]), model_ref=ref, model=model,
    )  # fmt: skip


def _publish(config: SegmenterConfig, model: Any, scores: dict[str, float], n_test: int,
             settings: Settings) -> str:  # fmt: skip
    from modelstore import MetricRecord, open_model_store
    from modelstore.loading import library_versions
    from modelstore.manifest import SegmentationSpec

    store = open_model_store(settings)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        manifest = store.publish(
            config.name, path, architecture=ARCHITECTURE, classes=["outside", "lung"],
            input_contract=config.contract, output="sigmoid",
            metrics=[MetricRecord(dataset=f"{config.masks} test split (by patient, seed {config.seed})",
                                  n=n_test, values={"dice": scores["test"]})],
            library_versions=library_versions(), aliases=config.aliases,
            description=f"lung-field U-Net, {config.size} px, trained by training_jobs.segmenter",
            segmentation=SegmentationSpec(threshold=config.threshold, dice=scores["test"]),
        )  # fmt: skip
    return manifest.ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--masks", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--name", default="lungs")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--publish", action="store_true")
    parser.add_argument("--alias", action="append", default=[])
    parser.add_argument("--save", type=Path, default=None, help="also save the model file here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = SegmenterConfig(masks=args.masks, images=args.images, name=args.name, size=args.size,
                             epochs=args.epochs, seed=args.seed, publish=args.publish,
                             aliases=tuple(args.alias))  # fmt: skip
    settings = Settings()
    if args.publish:
        from cxr.core.db.migrate import upgrade

        upgrade(settings=settings)
    result = train_segmenter(config, settings)
    if args.save:
        result.model.save(args.save)
    print(f"Dice {result.dice}; test median {np.median(result.test_dice):.3f}; bad test masks "
          f"{result.bad_test_masks}/{result.n['test']}; {result.epochs} epochs in "
          f"{result.train_seconds / 60:.1f} min; published {result.model_ref}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
