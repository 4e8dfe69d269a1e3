"""Overlay, feature-map grid, heatmap .npz, ROI JSON, and their artifacts in storage and SQL."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from cxr.core.imaging import InputContract
from cxr.explain.artifacts import artifact_prefix, insert_artifacts, write_artifacts
from cxr.explain.methods import FeatureMaps, GradCAM
from cxr.explain.render import feature_grid_png, overlay_png, render_files
from tests.explain_models import CONV_LAYER, explainer_for, region_model, with_blob, xray_like
from tests.models import tiny_cnn

SHA = "ab" + "0" * 62


@pytest.fixture(scope="module")
def explained():
    """A 300 wide × 250 tall image explained by a 32×32 model."""
    image = with_blob(xray_like(250, 300), (40, 190, 90, 260))
    contract = InputContract(height=32, width=32, channels=1)
    method = GradCAM(region_model((5, 20, 12, 28)), default_layer=CONV_LAYER)
    explainer = explainer_for(method, classes=["normal", "covid"], contract=contract)
    return image, explainer.explain([image])[0]


def test_files_of_one_image(explained):
    image, item = explained
    files = render_files(item, image)
    assert set(files) == {"heatmap.npz", "overlay.png", "rois.json"}
    overlay = Image.open(io.BytesIO(files["overlay.png"]))
    assert overlay.size == (300, 250) and overlay.mode == "RGB"
    pixels = np.asarray(overlay, dtype=np.float32)
    assert pixels[60, 220, 0] > pixels[60, 220, 2]  # jet: the hot box is red
    assert pixels[200, 30, 2] > pixels[200, 30, 0]  # and a cold corner is blue
    with np.load(io.BytesIO(files["heatmap.npz"])) as saved:
        np.testing.assert_array_equal(saved["heatmap"], item.heatmap)
        assert list(saved["image_size"]) == [250, 300]
    rois = json.loads(files["rois.json"])
    assert rois["image_size"] == [300, 250] and rois["rois"][0]["box"] == list(item.rois[0].box)


def test_overlay_keeps_the_original_size_for_any_heatmap():
    png = overlay_png(np.zeros((61, 47), np.float32), np.ones((3, 3), np.float32))
    assert Image.open(io.BytesIO(png)).size == (47, 61)


def test_feature_maps_grid_is_six_by_six_by_default():
    model = tiny_cnn(size=32, channels=1, classes=3)
    explainer = explainer_for(
        FeatureMaps(model),
        classes=["covid", "normal", "pneumonia"],
        contract=InputContract(height=32, width=32, channels=1),
    )
    item = explainer.explain([xray_like(64, 64)])[0]
    files = render_files(item, xray_like(64, 64))
    assert "feature_maps.png" in files and item.channels.shape[0] == 4  # the layer has 4 channels
    grid = Image.open(io.BytesIO(feature_grid_png(np.random.default_rng(0).random((36, 5, 5)))))
    assert grid.size == (6 * 66 - 2, 6 * 66 - 2)


def test_artifacts_in_storage_and_sql(explained, local_settings):
    from sqlalchemy import select

    from cxr.core.db.migrate import upgrade
    from cxr.core.db.models import Artifact
    from cxr.core.db.session import session_scope
    from cxr.core.storage import open_store

    image, item = explained
    store = open_store(settings=local_settings)
    files = render_files(item, image)
    records = write_artifacts(store, files, model_name="seed", model_version=3, method="gradcam++",
                              image_sha256=SHA, params={"layer": item.layer})  # fmt: skip
    prefix = f"artifacts/seed/3/gradcam-plus-plus/ab/{SHA}"
    assert artifact_prefix("seed", 3, "gradcam++", SHA) == prefix
    assert {r.kind for r in records} == {"heatmap", "overlay", "rois"}
    assert store.get(f"{prefix}/overlay.png") == files["overlay.png"]
    assert records[0].params["method"] == "gradcam++" and records[0].params["layer"] == CONV_LAYER
    upgrade(settings=local_settings)
    with session_scope(local_settings) as session:
        assert insert_artifacts(session, records) == 3
        assert insert_artifacts(session, records) == 0  # a redelivered task adds nothing
    with session_scope(local_settings) as session:
        rows = session.scalars(select(Artifact)).all()
        assert sorted(r.uri for r in rows) == sorted(r.uri for r in records)
    with pytest.raises(ValueError, match="sha256"):
        artifact_prefix("seed", 3, "gradcam", "not-a-hash")
