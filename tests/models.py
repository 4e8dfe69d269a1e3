"""Tiny real Keras models built in code for tests (no downloads, no pretrained weights)."""

from __future__ import annotations

from pathlib import Path


def tiny_cnn(size: int = 32, channels: int = 1, classes: int = 3, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    head = (
        keras.layers.Dense(1, activation="sigmoid")
        if classes == 2
        else keras.layers.Dense(classes, activation="softmax")
    )
    return keras.Sequential(
        [
            keras.Input((size, size, channels)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv_last"),
            keras.layers.GlobalAveragePooling2D(),
            head,
        ]
    )


def save_tiny_cnn(path: Path, **kwargs) -> Path:
    tiny_cnn(**kwargs).save(path)
    return path


def save_lambda_model(path: Path) -> Path:
    """A model holding Python bytecode: Keras safe mode must refuse to load it."""
    import keras

    model = keras.Sequential(
        [keras.Input((32, 32, 1)), keras.layers.Lambda(lambda x: x * 2.0), keras.layers.Flatten(),
         keras.layers.Dense(3, activation="softmax")]
    )  # fmt: skip
    model.save(path)
    return path
