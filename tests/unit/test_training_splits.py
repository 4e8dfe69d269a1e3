"""Patient-level splits: no patient in two splits, stratified, reproducible with the seed."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.core.errors import ConfigurationError
from training_jobs.splits import split_by_patient, stratification_labels


def _cohort(seed: int = 0) -> tuple[list[str], np.ndarray]:
    """300 patients with 1-3 images each; 20 of them have images in two classes."""
    rng = np.random.default_rng(seed)
    patients, labels = [], []
    for p in range(300):
        label = p % 3
        for _ in range(rng.integers(1, 4)):
            patients.append(f"patient-{p}")
            labels.append(label)
        if p < 20:  # a later film with a different finding
            patients.append(f"patient-{p}")
            labels.append((label + 1) % 3)
    return patients, np.asarray(labels)


def test_no_patient_crosses_splits():
    patients, labels = _cohort()
    split = split_by_patient(patients, labels, seed=0)
    owner = {}
    for name in ("train", "val", "test"):
        for i in split.indices(name):
            assert owner.setdefault(patients[i], name) == name, f"{patients[i]} is in two splits"
    covered = np.concatenate([split.train, split.val, split.test])
    assert sorted(covered.tolist()) == list(range(len(patients)))
    assert set(split.patients["train"]).isdisjoint(split.patients["test"])
    assert set(split.patients["val"]).isdisjoint(split.patients["test"])


def test_split_is_stratified_and_near_the_fractions():
    patients, labels = _cohort()
    split = split_by_patient(patients, labels, seed=1)
    n_patients = {name: len(split.patients[name]) for name in ("train", "val", "test")}
    assert n_patients == {"train": 210, "val": 30, "test": 60}
    for name in ("train", "val", "test"):
        per_class = np.bincount(labels[split.indices(name)], minlength=3)
        assert per_class.min() > 0.2 * per_class.sum()


def test_split_is_reproducible_with_the_seed_and_differs_across_seeds():
    patients, labels = _cohort()
    first = split_by_patient(patients, labels, seed=7)
    again = split_by_patient(list(patients), labels.copy(), seed=7)
    other = split_by_patient(patients, labels, seed=8)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(first.indices(name), again.indices(name))
    assert first.patients["test"] != other.patients["test"]


def test_majority_label_then_first_seen():
    strata = stratification_labels(["a", "a", "a", "b", "b"], [2, 1, 1, 0, 2])
    assert strata == {"a": 1, "b": 0}


def test_record_holds_hashes_not_patient_ids(local_settings):
    patients, labels = _cohort()
    record = split_by_patient(patients, labels, seed=0).to_record(local_settings)
    stored = [h for name in ("train", "val", "test") for h in record["patients"][name]]
    assert len(stored) == 300 and all(len(h) == 64 for h in stored)
    assert not any(h.startswith("patient-") for h in stored)
    assert record["seed"] == 0 and record["unit"] == "patient"


def test_bad_fractions_are_refused():
    with pytest.raises(ConfigurationError):
        split_by_patient(["a", "b"], [0, 1], fractions=(0.5, 0.5, 0.5))
