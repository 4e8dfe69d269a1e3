"""Scheduled retraining counts a site's labelled manifests (``CXR_RETRAIN_EXTRA_DATA``)."""

from __future__ import annotations

from cxr.core.imaging import InputContract
from cxr.core.settings import Settings
from scheduler.retrain_data import combined_manifest, extra_sources
from tests.unit.synthetic_cxr import write_folder_dataset, write_manifest_dataset
from training_jobs.datasets import load_dataset

CONTRACT = InputContract(height=24, width=24, channels=1, normalization="unit")


def test_extra_manifests_join_the_training_data_with_their_sources(tmp_path):
    base = write_folder_dataset(tmp_path / "base", per_class=4, size=40, seed=0)
    site = write_manifest_dataset(tmp_path / "site", [("covid", "stmary:1"), ("normal", "stmary:2"),
                                                      ("covid", "stmary:3")], size=40, seed=1)  # fmt: skip
    settings = Settings(data_dir=tmp_path / "cxr-data", retrain_extra_data=f" {site} ,")
    assert extra_sources(settings) == [str(site)]
    combined = combined_manifest(settings, str(base), extra_sources(settings))
    assert combined == combined_manifest(settings, str(base), extra_sources(settings))  # content-addressed
    data = load_dataset(combined, ["covid", "normal"], CONTRACT, settings)
    assert data.counts() == {"covid": 6, "normal": 5}
    assert sorted(s for s in data.sources if s) == ["stmary"] * 3
    assert {p for p, s in zip(data.patient_ids, data.sources, strict=True) if s} == {
        "stmary:1",
        "stmary:2",
        "stmary:3",
    }
