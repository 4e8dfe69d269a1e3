"""The model store against both backends: publish → resolve → pull, integrity, concurrency."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cxr.core.db.migrate import upgrade
from cxr.core.db.models import ModelVersion
from cxr.core.db.session import session_scope
from cxr.core.errors import ManifestError, ModelIntegrityError, ModelNotFound, UnsafeModelError
from cxr.core.imaging import InputContract
from modelstore import MetricRecord, open_model_store
from modelstore.importing import import_model
from modelstore.loading import load_keras_model
from tests.models import save_lambda_model, save_tiny_cnn, tiny_cnn

pytestmark = pytest.mark.integration

CONTRACT = InputContract(height=32, width=32, channels=1)


@pytest.fixture(params=["local", "s3"])
def settings(request, tmp_path):
    settings = request.getfixturevalue("local_settings" if request.param == "local" else "s3_settings")
    upgrade(settings=settings)
    return settings


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_tiny_cnn(tmp_path_factory.mktemp("model") / "model.keras")


def _publish(store, model_file, name="tiny", **kwargs):
    return store.publish(
        name, model_file, architecture="tiny_cnn", classes=["covid", "normal", "pneumonia"],
        input_contract=CONTRACT, output="softmax", gradcam_layer="conv_last", **kwargs,
    )  # fmt: skip


def test_publish_resolve_pull_roundtrip(settings, model_file):
    store = open_model_store(settings)
    first = _publish(store, model_file, aliases=["production"])
    second = _publish(store, model_file, parent_version=1)
    assert (first.version, second.version) == (1, 2)
    assert store.versions("tiny") == [1, 2]

    assert store.resolve("tiny@production").version == 1
    assert store.resolve("tiny@latest").version == 2
    assert store.resolve("tiny").version == 2
    resolved = store.resolve("tiny@1")
    assert resolved.sha256 == first.sha256
    assert store.file_uri(resolved).endswith("models/tiny/1/model.keras")

    store.set_alias("tiny", "production", 2)
    assert store.resolve("tiny@production").version == 2
    assert store.aliases("tiny") == {"production": 2}

    pulled = store.pull("tiny@1")
    assert pulled.manifest.classes == ["covid", "normal", "pneumonia"]
    assert pulled.manifest.intended_use.startswith("Research use only")
    model = load_keras_model(pulled.path)
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    expected = tiny_cnn()(x).numpy()  # same seed → same weights as the published file
    np.testing.assert_allclose(model(x).numpy(), expected, atol=1e-6)
    assert store.pull("tiny@1").path == pulled.path  # cached by sha256

    store.add_metrics("tiny", 1, MetricRecord(dataset="unit test", n=2, values={"accuracy": 0.5}))
    assert store.manifest("tiny", 1).metrics[0].values == {"accuracy": 0.5}
    with session_scope(settings) as session:
        rows = session.query(ModelVersion).filter_by(name="tiny").order_by(ModelVersion.version).all()
        assert [(r.version, r.sha256) for r in rows] == [(1, first.sha256), (2, second.sha256)]
        assert rows[0].manifest["metrics"][0]["values"] == {"accuracy": 0.5}


def test_unknown_refs_are_clear_errors(settings, model_file):
    store = open_model_store(settings)
    with pytest.raises(ModelNotFound, match="no model 'nothing' in the model store"):
        store.resolve("nothing@latest")
    _publish(store, model_file)
    with pytest.raises(ModelNotFound, match="no alias 'staging'"):
        store.resolve("tiny@staging")
    with pytest.raises(ModelNotFound, match="tiny@9"):
        store.resolve("tiny@9")
    with pytest.raises(ManifestError, match="invalid model name"):
        store.resolve("../evil@1")
    with pytest.raises(ManifestError, match="invalid alias"):
        store.set_alias("tiny", "latest", 1)


def test_tampered_model_file_is_refused_on_pull(settings, model_file):
    store = open_model_store(settings)
    manifest = _publish(store, model_file)
    key = f"models/tiny/{manifest.version}/model.keras"
    store.storage.put(key, store.storage.get(key) + b"tampered")
    with pytest.raises(ModelIntegrityError, match="refused") as caught:
        store.pull("tiny@1")
    assert manifest.sha256 in str(caught.value)
    assert not any(settings.model_cache_dir.rglob("model.keras"))  # nothing half-trusted is kept


def test_tampered_cache_copy_is_replaced(settings, model_file):
    store = open_model_store(settings)
    _publish(store, model_file)
    pulled = store.pull("tiny@1")
    pulled.path.write_bytes(b"corrupted on local disk")
    again = store.pull("tiny@1")
    assert again.path.read_bytes() == model_file.read_bytes()


def test_concurrent_publishes_get_distinct_versions(settings, model_file):
    def publish_one(_: int) -> int:
        return _publish(open_model_store(settings), model_file).version  # own client per thread

    with ThreadPoolExecutor(6) as pool:
        versions = list(pool.map(publish_one, range(6)))
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    assert open_model_store(settings).versions("tiny") == [1, 2, 3, 4, 5, 6]


def test_versions_are_never_reused_after_a_failed_publish(settings, model_file):
    store = open_model_store(settings)
    store.storage.put_if_absent("models/tiny/1/.claim", json.dumps({"crashed": True}).encode())
    assert _publish(store, model_file).version == 2


def test_lambda_model_refused_on_import_and_on_pull(settings, tmp_path):
    store = open_model_store(settings)
    evil = save_lambda_model(tmp_path / "evil.keras")
    with pytest.raises(UnsafeModelError, match="safe mode"):
        import_model(store, evil, name="evil", classes=["a", "b", "c"], image_size=32)
    assert store.names() == []
    # Even if such a file reaches the store some other way, loading it after pull refuses it.
    store.publish("evil", evil, architecture="x", classes=["a", "b", "c"], input_contract=CONTRACT,
                  output="softmax")  # fmt: skip
    with pytest.raises(UnsafeModelError):
        load_keras_model(store.pull("evil@latest").path)


def test_import_checks_shapes_and_registers(settings, tmp_path):
    store = open_model_store(settings)
    seed_model = save_tiny_cnn(tmp_path / "seed.keras", classes=2)
    with pytest.raises(ManifestError, match="--image-size is 64"):
        import_model(store, seed_model, name="seed", classes=["covid", "non-covid"], image_size=64)
    with pytest.raises(ManifestError, match="1 output units for 3 classes"):
        import_model(store, seed_model, name="seed", classes=["a", "b", "c"], image_size=32)
    manifest = import_model(store, seed_model, name="seed", classes=["covid", "non-covid"], image_size=32)
    assert (manifest.output, manifest.gradcam_layer, manifest.input.channels) == ("sigmoid", "conv_last", 1)
