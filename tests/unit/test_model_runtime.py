"""One model runtime: every path that runs a model gives the same probabilities and labels."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
from sqlalchemy import select

from cxr.core.db.models import Prediction
from cxr.core.db.session import session_scope
from cxr.core.imaging import InputContract, decode_image
from cxr.core.imaging.preprocess import preprocess_gray
from modelstore import ResolvedModel, open_model_store
from modelstore.runtime import ModelRuntime
from tests import worker_support as support
from tests.unit.test_cli_models import run_cxr
from training_jobs.model_eval import evaluate_model
from worker.chunk import run_classify_chunk
from worker.model_cache import ModelCache

#: Three channels and a per-channel normalization: the paths must agree on channels and range too.
CONTRACT = InputContract(height=32, width=32, channels=3, normalization="torch")
SIZES = [(96, 80), (40, 120), (200, 150), (64, 64), (33, 90)]
TOLERANCE = 1e-6


@pytest.fixture
def published(settings, tmp_path) -> ResolvedModel:
    path = support.build_model(tmp_path / "tiny.keras", contract=CONTRACT)
    manifest = open_model_store(settings).publish(
        "tiny", path, architecture="tiny_cnn", classes=support.CLASSES, input_contract=CONTRACT,
        output="softmax", gradcam_layer="conv_last", aliases=["production"],
    )  # fmt: skip
    return ResolvedModel(manifest.name, manifest.version, manifest.sha256)


def test_worker_evaluation_explanation_and_training_split_agree(settings, published, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    files = []
    for seed, size in enumerate(SIZES):
        path = folder / f"image-{seed}.png"
        path.write_bytes(support.synthetic_png(seed, size))
        files.append(path)
    sha = [hashlib.sha256(path.read_bytes()).hexdigest() for path in files]

    # 1. the worker (in-process, as without a broker): predictions in SQL
    job_id = support.create_job(settings, published.to_dict(), total=len(files))
    run_classify_chunk(
        settings, job_id, published.to_dict(), [p.as_uri() for p in files], 0, cache=ModelCache(settings)
    )
    with session_scope(settings) as session:
        stored = {row.image_sha256: row for row in session.scalars(select(Prediction))}
    worker = np.array([[stored[s].probabilities[c] for c in support.CLASSES] for s in sha])
    worker_labels = [stored[s].label for s in sha]

    # 2. cxr evaluate and the promotion gate (both measure through evaluate_model)
    manifest_csv = folder / "manifest.csv"  # paths relative to the manifest's folder
    with manifest_csv.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "patient_id"])
        for i, path in enumerate(files):
            writer.writerow([path.name, support.CLASSES[i % 3], f"p{i}"])
    evaluated = evaluate_model("tiny@production", str(manifest_csv), settings, bootstrap_resamples=10)
    order = [evaluated.image_sha256.index(s) for s in sha]
    evaluation = evaluated.probabilities[order]

    # 3. cxr explain: the command itself, in its own process, on the same store
    explained = json.loads(
        run_cxr(
            "explain",
            *map(str, files),
            "--model",
            "tiny@production",
            "--out",
            str(tmp_path / "x"),
            "--json",
            data_dir=settings.data_dir,
        ).stdout
    )
    explanation = np.array([[r["probabilities"][c] for c in support.CLASSES] for r in explained["images"]])
    explanation_labels = [r["label"] for r in explained["images"]]

    # 4. the test split of a training run: cached gray inputs through a runtime on the model
    runtime = ModelRuntime.load(open_model_store(settings), published)
    side = CONTRACT.decode_side  # decoded as training datasets and the worker decode
    pixels = [
        decode_image(p.read_bytes(), max_bytes=1 << 26, max_pixels=10**8, target_side=side).pixels
        for p in files
    ]
    training = runtime.predict_gray(np.stack([preprocess_gray(p, CONTRACT) for p in pixels]), batch_size=3)

    for name, other in (("evaluation", evaluation), ("explanation", explanation), ("training", training)):
        np.testing.assert_allclose(other, worker, atol=TOLERANCE, rtol=0, err_msg=name)
    assert worker_labels == explanation_labels == runtime.labels(worker)
    assert not np.allclose(worker, worker[0]), "the images must not all look alike to the model"


def test_a_tie_is_broken_the_same_way_by_the_stored_label_and_the_explanation(settings, tmp_path):
    """A sigmoid output of exactly 0.5 is classes[0], wherever the label is read."""
    import keras

    inputs = keras.Input((32, 32, 1))
    features = keras.layers.Conv2D(2, 3, activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    output = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros", name="head")(pooled)
    model = keras.Model(inputs, output)
    contract = InputContract(height=32, width=32, channels=1, normalization="unit")
    runtime = ModelRuntime(model, classes=["normal", "covid"], contract=contract, output="sigmoid", ref="tie")
    image = np.random.default_rng(0).random((40, 40), dtype=np.float32)

    probabilities = runtime.predict_pixels([image])
    np.testing.assert_array_equal(probabilities, [[0.5, 0.5]])
    assert runtime.labels(probabilities) == ["normal"]
    [item] = runtime.explainer("gradcam").explain([image])
    assert item.label == "normal" and item.explained_class == "normal"


def test_a_model_whose_output_disagrees_with_its_classes_is_refused(settings):
    import keras

    from cxr.core.errors import ManifestError

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    contract = InputContract(height=8, width=8, channels=1)
    runtime = ModelRuntime(model, classes=["a", "b", "c"], contract=contract, output="softmax", ref="m@1")
    with pytest.raises(ManifestError, match=r"m@1: a softmax model with 3 classes must output \(N, 3\)"):
        runtime.predict_proba(np.zeros((1, 8, 8, 1), np.float32))
