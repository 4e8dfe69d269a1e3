"""Patient-level train / validation / test splits.

Every image of a patient goes to the same split: films of one person are far more alike than
films of two, so an image-level split lets a model be tested on near-copies of its training
data (the main reason published COVID figures of 97-99 % do not survive new hospitals).

The split is stratified by class through each patient's *stratification label*: the most common
label among their images, ties broken by the first one seen. Within each stratum patients are
shuffled with a seeded generator and dealt out by the fractions, so the same patients, seed and
fractions always give the same split, on any machine.

Leave-source-out (``split_holding_out_sources``): the films of some sources (hospitals,
collections) are set aside before the patient split, never enter train or validation, and are
evaluated on their own. Where the source nearly gives the label away, as on public COVID sets,
that is the honest stand-in for a hospital the model has never seen.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from cxr.core.errors import ConfigurationError
from cxr.core.privacy import hash_identifier
from cxr.core.settings import Settings

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


@dataclass(frozen=True)
class Split:
    """Image indices per split, and the patients behind them."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    patients: dict[str, list[str]]  # split name -> patient ids in clear (memory only)
    seed: int
    fractions: tuple[float, float, float]
    #: Leave-source-out: images of ``holdout_sources``, in none of train / val / test.
    holdout: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    holdout_sources: tuple[str, ...] = ()
    holdout_patients: list[str] = field(default_factory=list)

    def indices(self, name: str) -> np.ndarray:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def to_record(self, settings: Settings) -> dict:
        """What the TrainingRun row stores: salted patient-id hashes per split, never ids."""
        record: dict = {
            "seed": self.seed,
            "fractions": list(self.fractions),
            "unit": "patient",
            "n_images": {name: int(self.indices(name).size) for name in SPLIT_NAMES},
            "patients": {
                name: sorted(hash_identifier(p, settings) for p in self.patients[name])
                for name in SPLIT_NAMES
            },
        }
        if self.holdout_sources:
            record["holdout"] = {
                "sources": list(self.holdout_sources),
                "n_images": int(self.holdout.size),
                "patients": sorted(hash_identifier(p, settings) for p in self.holdout_patients),
            }
        return record


def stratification_labels(patient_ids: Sequence[str], labels: Sequence[int]) -> dict[str, int]:
    """Each patient's majority label (ties: the label seen first)."""
    per_patient: dict[str, Counter[int]] = {}
    first: dict[str, list[int]] = {}
    for patient, label in zip(patient_ids, labels, strict=True):
        per_patient.setdefault(patient, Counter())[int(label)] += 1
        first.setdefault(patient, [])
        if int(label) not in first[patient]:
            first[patient].append(int(label))
    out = {}
    for patient, counts in per_patient.items():
        top = max(counts.values())
        out[patient] = next(label for label in first[patient] if counts[label] == top)
    return out


def _deal(n: int, fractions: Sequence[float]) -> list[int]:
    """How many of ``n`` patients each split gets; rounding leftovers go to train, and val and
    test each get at least one patient when the stratum has three or more."""
    sizes = [int(np.floor(n * f)) for f in fractions]
    for i in (2, 1):
        if n >= 3 and sizes[i] == 0 and fractions[i] > 0:
            sizes[i] = 1
    sizes[0] = n - sizes[1] - sizes[2]
    return sizes


def split_by_patient(
    patient_ids: Sequence[str],
    labels: Sequence[int],
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> Split:
    """Assign whole patients to train / val / test, stratified by their label, seeded."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigurationError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    strata = stratification_labels(patient_ids, labels)
    rng = np.random.default_rng(seed)
    assigned: dict[str, str] = {}
    for label in sorted(set(strata.values())):
        members = sorted(p for p, s in strata.items() if s == label)
        members = [members[i] for i in rng.permutation(len(members))]
        start = 0
        for name, size in zip(SPLIT_NAMES, _deal(len(members), fractions), strict=True):
            for patient in members[start : start + size]:
                assigned[patient] = name
            start += size
    index_lists: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for i, patient in enumerate(patient_ids):
        index_lists[assigned[patient]].append(i)
    patients = {name: sorted({patient_ids[i] for i in index_lists[name]}) for name in SPLIT_NAMES}
    return Split(
        train=np.asarray(index_lists["train"], dtype=np.int64),
        val=np.asarray(index_lists["val"], dtype=np.int64),
        test=np.asarray(index_lists["test"], dtype=np.int64),
        patients=patients,
        seed=seed,
        fractions=fractions,  # type: ignore[arg-type]
    )


def check_holdout_sources(sources: Sequence[str | None], holdout: Iterable[str]) -> tuple[str, ...]:
    """The requested held-out sources, lower-cased and sorted; a ConfigurationError naming the
    known sources when one is unknown (a typo must not silently hold out nothing)."""
    wanted = sorted({name.strip().lower() for name in holdout if name.strip()})
    known = sorted({s for s in sources if s is not None})
    unknown = [name for name in wanted if name not in known]
    if unknown:
        listed = ", ".join(known) if known else "none (no source/site column, no source-prefixed patient ids)"
        raise ConfigurationError(f"unknown source(s) {', '.join(unknown)}; known sources: {listed}")
    return tuple(wanted)


def split_holding_out_sources(
    patient_ids: Sequence[str],
    labels: Sequence[int],
    sources: Sequence[str | None],
    holdout: Iterable[str],
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> Split:
    """Set the images of the ``holdout`` sources aside, then split the rest by patient.

    Indices are into the full arrays. A patient with films in a held-out source is held out whole:
    their films from other sources are dropped (logged), so no person is both trained and tested
    on. With no held-out source this is ``split_by_patient``.
    """
    held = set(check_holdout_sources(sources, holdout))
    if not held:
        return split_by_patient(patient_ids, labels, seed=seed, fractions=fractions)
    held_index = [i for i, source in enumerate(sources) if source in held]
    held_patients = {patient_ids[i] for i in held_index}
    rest = [
        i for i, source in enumerate(sources) if source not in held and patient_ids[i] not in held_patients
    ]
    straddling = len(patient_ids) - len(held_index) - len(rest)
    if straddling:
        log.warning(
            "%d image(s) from other sources belong to patients of the held-out sources: left out of "
            "train, validation and test",
            straddling,
        )
    inner = split_by_patient(
        [patient_ids[i] for i in rest], [labels[i] for i in rest], seed=seed, fractions=fractions
    )
    back = np.asarray(rest, dtype=np.int64)
    return replace(
        inner,
        train=back[inner.train],
        val=back[inner.val],
        test=back[inner.test],
        holdout=np.asarray(held_index, dtype=np.int64),
        holdout_sources=tuple(sorted(held)),
        holdout_patients=sorted(held_patients),
    )
