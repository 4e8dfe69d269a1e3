"""``tf.data`` input pipelines: batching, augmentation of training data, normalization.

Where augmentation happens, and why: **before normalization, in the [0, 1] gray space**.
The in-memory cache holds ``preprocess_gray(pixels, contract)`` (the first half of the shared
function: resized, one channel, [0, 1]); each batch is then augmented, clipped back to [0, 1],
replicated to the model's channels and normalized by ``cxr.core.imaging.preprocess.normalize``,
the very function inference uses. Augmenting in the normalized space instead would be wrong in
three quiet ways: brightness/contrast layers clip to a value range that no longer exists (caffe
inputs run from about -124 to 152), a brightness shift of 0.1 would mean different things per
channel under torch normalization, and the black fill of a rotated corner must be normalize(0),
not 0. For un-augmented data (the validation loss during fitting) the result equals
``preprocess(pixels, contract)`` exactly (a unit test holds this). Trained models are measured
through the model runtime (``modelstore.runtime``), not through this pipeline.

Augmentations are small on purpose (a radiograph's geometry is meaningful): rotation ±7°, shear
±0.05, zoom ±10 %, brightness ±0.1, contrast ±10 %. Horizontal flips are off by default: a
flipped chest film puts the heart on the right, which no real frontal PA/AP film shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr.core.imaging import InputContract
from cxr.core.imaging.preprocess import normalize


@dataclass(frozen=True)
class Augmentation:
    rotation: float = 0.02  # fraction of a full turn: 0.02 ≈ ±7°
    shear: float = 0.05
    zoom: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1
    horizontal_flip: bool = False

    def layers(self, seed: int) -> list[Any]:
        """Keras random preprocessing layers operating on [0, 1] images (fill = black)."""
        import keras

        layers = keras.layers
        # float32 even under a mixed-precision policy: augmentation is input preparation, and
        # float16 would round [0, 1] pixels to about 1/2000.
        exact = {"dtype": "float32"}
        fill = {"fill_mode": "constant", "fill_value": 0.0, **exact}
        out = []
        if self.horizontal_flip:
            out.append(layers.RandomFlip("horizontal", seed=seed, **exact))
        if self.rotation:
            out.append(layers.RandomRotation(self.rotation, seed=seed + 1, **fill))
        if self.shear:
            out.append(layers.RandomShear(x_factor=self.shear, y_factor=self.shear, seed=seed + 2, **fill))
        if self.zoom:
            out.append(layers.RandomZoom(self.zoom, seed=seed + 3, **fill))
        if self.brightness:
            out.append(
                layers.RandomBrightness(self.brightness, value_range=(0.0, 1.0), seed=seed + 4, **exact)
            )
        if self.contrast:
            out.append(layers.RandomContrast(self.contrast, value_range=(0.0, 1.0), seed=seed + 5, **exact))
        return out


NO_AUGMENTATION = Augmentation(rotation=0, shear=0, zoom=0, brightness=0, contrast=0)


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """'Balanced' weights n / (k · n_c): each class contributes equally to the loss. A class
    absent from the training data gets weight 1 (it cannot contribute anyway)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    total = counts.sum()
    return {i: float(total / (num_classes * c)) if c else 1.0 for i, c in enumerate(counts)}


def source_balanced_weights(
    labels: np.ndarray, sources: np.ndarray, num_classes: int, cap: float = 4.0
) -> np.ndarray:
    """Per-image weights under which every class weighs the same (as ``class_weights``) and,
    within a class, every source weighs the same, as far as a within-class factor of at most
    ``cap`` allows.

    On cxr-dev a source's look predicts the label (ieee8023 is 79 % covid): its few normal and
    pneumonia films are what teaches a model that the look is not the label, and plain class
    weights let the many covid films drown them. Balancing sources within each class raises
    those films' say. The cap keeps a handful of films (about ten ieee8023 normals in a split)
    from deciding a class alone; each class is then scaled back to its balanced total, which
    lifts every factor of a capped class a little (11 ieee8023 normals end at 7.5× an NIH one).
    """
    labels = np.asarray(labels, dtype=np.int64)
    sources = np.asarray(sources).astype(str)
    plain = class_weights(labels, num_classes)
    weights = np.ones(len(labels), dtype=np.float64)
    for label in np.unique(labels):
        members = labels == label
        names, counts = np.unique(sources[members], return_counts=True)
        share = {name: members.sum() / (len(names) * n) for name, n in zip(names, counts, strict=True)}
        within = np.array([min(share[name], cap) for name in sources[members]])
        weights[members] = plain[int(label)] * within * members.sum() / within.sum()
    return weights.astype(np.float32)


def to_model_input(gray: Any, contract: InputContract) -> Any:
    """(B, H, W, 1) [0, 1] → the model's channels and value range, via the shared ``normalize``."""
    import tensorflow as tf

    gray = tf.clip_by_value(tf.cast(gray, tf.float32), 0.0, 1.0)
    image = tf.repeat(gray, contract.channels, axis=-1) if contract.channels > 1 else gray
    # Plain tensor arithmetic: AutoGraph has nothing to convert (and cannot parse ``match``).
    return tf.cast(tf.autograph.experimental.do_not_convert(normalize)(image, contract), tf.float32)


def targets(labels: np.ndarray, output: str, num_classes: int | None) -> np.ndarray:
    """Sigmoid models learn P(classes[1]) from a float (N, 1); softmax models one-hot rows."""
    if output == "sigmoid":
        return np.asarray(labels, dtype=np.float32).reshape(-1, 1)
    if num_classes is None:
        raise ValueError("softmax targets need num_classes (the width of the one-hot rows)")
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray | None,
    contract: InputContract,
    *,
    output: str,
    batch_size: int,
    num_classes: int | None = None,
    augmentation: Augmentation | None = None,
    shuffle: bool = False,
    seed: int = 0,
    sample_weight: np.ndarray | None = None,
) -> Any:
    """A batched ``tf.data.Dataset`` of (input, target[, weight]), or of inputs alone when
    ``labels`` is None.

    Only training data should get an ``augmentation``, ``shuffle`` and ``sample_weight``.
    """
    import keras
    import tensorflow as tf

    source: Any = images if labels is None else (images, targets(labels, output, num_classes))
    if sample_weight is not None:
        if labels is None:
            raise ValueError("sample weights weigh labelled images; these have no labels")
        source = (*source, np.asarray(sample_weight, dtype=np.float32))
    dataset = tf.data.Dataset.from_tensor_slices(source)
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    augment_layers = (augmentation or NO_AUGMENTATION).layers(seed)
    augmenter = keras.Sequential(augment_layers, name="augment") if augment_layers else None

    def prepare(x: Any) -> Any:
        if augmenter is not None:
            x = augmenter(x, training=True)
        return to_model_input(x, contract)

    if labels is None:
        dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    elif sample_weight is not None:
        dataset = dataset.map(lambda x, y, w: (prepare(x), y, w), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(lambda x, y: (prepare(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
