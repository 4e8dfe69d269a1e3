"""``cxr jobs sample``: which films of a scored job to label; deterministic with a seed."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from cxr.core.db.session import dispose_engines
from scheduler.sampling import STRATEGIES, Picked, contact_sheet, k_center_greedy, margins, select
from tests import worker_support as support
from tests.unit.test_cli_models import run_cxr


def _scores(n: int = 40, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, rng.normal(size=(n, 8))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_selection_is_deterministic_with_a_seed_and_has_no_repeats(strategy):
    probs, features = _scores()
    first = select(strategy, 12, probs, seed=7, features=features)
    assert first == select(strategy, 12, probs, seed=7, features=features)
    assert len(first) == len(set(first)) == 12
    if strategy in ("random", "diverse"):
        assert first != select(strategy, 12, probs, seed=8, features=features)


def test_uncertain_takes_the_smallest_margins_and_stratified_spreads_labels():
    probs, _ = _scores()
    picked = select("uncertain", 5, probs, seed=0)
    assert sorted(margins(probs)[picked]) == sorted(np.sort(margins(probs))[:5])
    spread = select("stratified", 6, probs, seed=0)
    assert sorted(np.bincount(probs[spread].argmax(axis=1), minlength=3)) == [2, 2, 2]


def test_k_center_greedy_covers_every_cluster_before_repeating_one():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [50, 0], [0, 50], [50, 50]], dtype=float)
    points = np.concatenate([c + rng.normal(size=(10, 2)) for c in centres])
    chosen = k_center_greedy(points, 4, np.random.default_rng(3))
    assert sorted(i // 10 for i in chosen) == [0, 1, 2, 3]


def test_contact_sheet_escapes_every_archive_string():
    hostile = "file:///a/<script>alert(1)</script>.png"
    film = Picked(hostile, "0" * 64, "<b>covid</b>", {"<i>covid</i>": 0.9, "normal": 0.1}, 0.8)
    page = contact_sheet([film], [None], "job <x>")
    assert "<script>" not in page and "<b>covid" not in page and "<i>" not in page and "<x>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;i&gt;covid&lt;/i&gt; 0.90" in page


@pytest.fixture
def settings(tmp_path):
    settings = support.embedded_with_tiny_model(tmp_path, inference_batch_size=4)
    yield settings
    dispose_engines()


def test_sample_a_scored_job_from_a_shell(settings, tmp_path):
    archive = tmp_path / "archive"
    shutil.copytree(support.SAMPLE, archive, ignore=shutil.ignore_patterns("*.csv", "*.md"))
    scored = json.loads(run_cxr("score", str(archive), "--model", "tiny@production", "--wait", "--json",
                                data_dir=settings.data_dir).stdout)  # fmt: skip
    job = scored["job_id"]

    def sample(strategy: str, seed: int, name: str, *extra: str) -> list[dict[str, str]]:
        out = tmp_path / f"{name}.csv"
        run_cxr("jobs", "sample", job, "--n", "41", "--strategy", strategy, "--seed", str(seed), "--out",
                str(out), "--site", "st-mary", *extra, data_dir=settings.data_dir)  # fmt: skip
        with out.open() as stream:
            return list(csv.DictReader(stream))

    rows = sample("diverse", 3, "a", "--sheet", str(tmp_path / "sheet.html"))
    assert len(rows) == 41 and list(rows[0]) == ["path", "label", "patient_id", "site"]
    assert {r["label"] for r in rows} == {""} and {r["site"] for r in rows} == {"st-mary"}
    assert len({r["path"] for r in rows}) == 41
    assert rows == sample("diverse", 3, "b")  # the same seed picks the same films in the same order
    page = (tmp_path / "sheet.html").read_text()
    assert page.count("<img ") == 41 and "Research use only" in page
    few = sample("uncertain", 0, "c")[:5]
    assert few == sample("uncertain", 0, "d")[:5]
