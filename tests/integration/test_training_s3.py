"""Training data read from S3 (both layouts), through the project's storage layer."""

from __future__ import annotations

import pytest

from cxr.core.imaging import InputContract
from cxr.core.storage import open_store
from tests.unit.synthetic_cxr import write_folder_dataset, write_manifest_dataset
from training_jobs.datasets import load_dataset

pytestmark = pytest.mark.integration
CONTRACT = InputContract(height=32, width=32, channels=1, normalization="unit")


def _upload(local_root, uri, settings) -> None:
    store = open_store(uri, settings)
    for path in sorted(local_root.rglob("*")):
        if path.is_file():
            store.put(path.relative_to(local_root).as_posix(), path.read_bytes())


def test_folder_and_manifest_layouts_from_s3(tmp_path, s3_settings):
    bucket = s3_settings.storage_url.split("/")[2]
    folder = write_folder_dataset(tmp_path / "folder", per_class=3, size=40)
    _upload(folder, f"s3://{bucket}/datasets/folder", s3_settings)
    from_folder = load_dataset(f"s3://{bucket}/datasets/folder", ["covid", "normal"], CONTRACT, s3_settings)
    assert from_folder.counts() == {"covid": 3, "normal": 3}

    manifest = write_manifest_dataset(tmp_path / "m", [("covid", "p1"), ("pneumonia", "p2")], size=40)
    _upload(manifest.parent, f"s3://{bucket}/datasets/m", s3_settings)
    from_manifest = load_dataset(
        f"s3://{bucket}/datasets/m/manifest.csv", ["covid", "non-covid"], CONTRACT, s3_settings
    )
    assert from_manifest.patient_ids == ["p1", "p2"] and from_manifest.counts() == {
        "covid": 1,
        "non-covid": 1,
    }
