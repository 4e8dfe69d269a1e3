"""Datasets (both layouts), label mapping, duplicates, fingerprint, and the pipeline's promise
that un-augmented batches equal the shared ``preprocess`` output."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cxr.core.errors import ConfigurationError
from cxr.core.imaging import InputContract, decode_image, preprocess
from tests.unit.synthetic_cxr import write_folder_dataset, write_manifest_dataset
from training_jobs.datasets import dataset_fingerprint, describe, load_dataset, map_label
from training_jobs.pipeline import Augmentation, class_weights, make_dataset

CONTRACT = InputContract(height=32, width=32, channels=1, normalization="unit")


def test_label_mapping():
    binary = ["covid", "non-covid"]
    assert map_label("COVID", binary) == "covid"
    assert map_label("normal", binary) == "non-covid"
    assert map_label("pneumonia", binary) == "non-covid"
    three = ["covid", "normal", "pneumonia"]
    assert map_label("pneumonia", three) == "pneumonia"
    assert map_label("tuberculosis", three) is None


def test_folder_layout_drops_duplicates_and_says_each_image_is_a_patient(tmp_path, local_settings, caplog):
    root = write_folder_dataset(
        tmp_path / "data", per_class=4, size=40, classes=("covid", "normal", "pneumonia")
    )
    (root / "normal" / "copy.png").write_bytes((root / "covid" / "000.png").read_bytes())
    (root / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.INFO):
        data = load_dataset(str(root), ["covid", "non-covid"], CONTRACT, local_settings)
    assert len(data) == 12 and data.dropped == {"exact duplicate": 1}
    assert data.counts() == {"covid": 4, "non-covid": 8}
    assert data.images.shape == (12, 32, 32, 1) and data.images.dtype == np.float32
    assert len(set(data.patient_ids)) == 12
    assert "own patient" in caplog.text


def test_manifest_layout_keeps_patients_and_fingerprint_ignores_order(tmp_path, local_settings):
    rows = [("covid", "p1"), ("covid", "p1"), ("normal", "p2"), ("pneumonia", "p3"), ("normal", "p1")]
    manifest = write_manifest_dataset(tmp_path / "m", rows, size=40)
    data = load_dataset(str(manifest), ["covid", "normal", "pneumonia"], CONTRACT, local_settings)
    assert data.patient_ids == ["p1", "p1", "p2", "p3", "p1"]
    assert data.labels.tolist() == [0, 0, 1, 2, 1]
    labels = [data.classes[i] for i in data.labels]
    assert data.fingerprint == dataset_fingerprint(data.sha256[::-1], labels[::-1])
    assert data.fingerprint != dataset_fingerprint(data.sha256, ["covid"] * 5)


def test_manifest_without_patient_column_is_refused(tmp_path, local_settings):
    (tmp_path / "bad.csv").write_text("path,label\na.png,covid\n")
    with pytest.raises(ConfigurationError, match="patient_id"):
        load_dataset(str(tmp_path / "bad.csv"), ["covid", "normal"], CONTRACT, local_settings)


@pytest.mark.parametrize(
    ("channels", "normalization"),
    [(1, "unit"), (3, "symmetric"), (3, "caffe"), (3, "torch"), (3, "raw255"), (1, "caffe")],
)
def test_unaugmented_pipeline_equals_shared_preprocess(tmp_path, local_settings, channels, normalization):
    root = write_folder_dataset(tmp_path / "data", per_class=2, size=45)
    contract = InputContract(height=24, width=28, channels=channels, normalization=normalization)
    data = load_dataset(str(root), ["covid", "normal"], contract, local_settings)
    batch = next(iter(make_dataset(data.images, None, contract, output="sigmoid", batch_size=8)))
    files = sorted((root / "covid").glob("*.png")) + sorted((root / "normal").glob("*.png"))
    expected = np.stack(
        [
            preprocess(decode_image(f.read_bytes(), max_bytes=10**7, max_pixels=10**7).pixels, contract)
            for f in files
        ]
    )
    np.testing.assert_allclose(np.asarray(batch), expected, rtol=1e-5, atol=1e-4)


def test_augmentation_stays_in_range_and_changes_pixels():
    rng = np.random.default_rng(0)
    images = rng.random((8, 32, 32, 1)).astype(np.float32)
    contract = InputContract(height=32, width=32, channels=3, normalization="symmetric")
    plain = next(iter(make_dataset(images, np.zeros(8), contract, output="sigmoid", batch_size=8)))[0]
    augmented = next(
        iter(
            make_dataset(
                images,
                np.zeros(8),
                contract,
                output="sigmoid",
                batch_size=8,
                augmentation=Augmentation(),
                seed=1,
            )
        )
    )[0]
    augmented = np.asarray(augmented)
    assert augmented.shape == (8, 32, 32, 3)
    assert augmented.min() >= -1.0 and augmented.max() <= 1.0
    assert not np.allclose(augmented, np.asarray(plain))
    assert Augmentation().horizontal_flip is False


def test_balanced_class_weights():
    assert class_weights(np.array([0, 0, 0, 1]), 2) == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}


def test_describe_counts_images_per_class_and_source(tmp_path, local_settings):
    manifest = tmp_path / "m.csv"
    write_manifest_dataset(tmp_path, [("covid", "p1"), ("normal", "p2")], size=40)
    text = (tmp_path / "manifest.csv").read_text().replace("view", "source").replace(",PA", ",nih")
    manifest.write_text(text)
    data = load_dataset(str(manifest), ["covid", "normal"], CONTRACT, local_settings)
    assert describe(data)["per_class_and_source"] == {"covid / nih": 1, "normal / nih": 1}
