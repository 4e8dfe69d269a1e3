"""The site-validation verdict: overlap, difference, and too few films to conclude."""

from __future__ import annotations

from modelstore.manifest import MetricRecord
from training_jobs.site_validation import reference_record, site_verdict


def figures(auc: float, ci: tuple[float, float], n: dict[str, int]) -> dict:
    return {"covid_auc": auc, "n_per_class": n, "ci95": {"covid_auc": list(ci)}}


REFERENCE = MetricRecord(dataset="dev test split (by patient, seed 0)", n=200,
                         values=figures(0.94, (0.90, 0.97), {"covid": 80, "normal": 120}))  # fmt: skip


def test_reference_is_the_test_split_record():
    other = MetricRecord(dataset="site.csv", n=10, values={})
    assert reference_record([other, REFERENCE]) is REFERENCE and reference_record([other]) is None


def test_overlap_with_enough_films_is_consistent_and_with_few_is_too_few():
    enough = site_verdict(figures(0.92, (0.86, 0.96), {"covid": 40, "normal": 35}), REFERENCE)
    assert enough["status"] == "consistent" and enough["figures"]["covid_auc"]["overlap"]
    few = site_verdict(figures(0.92, (0.80, 0.99), {"covid": 12, "normal": 9, "pneumonia": 0}), REFERENCE)
    assert few["status"] == "too_few" and "too wide" in few["text"] and "normal 9" in few["text"]
    assert "pneumonia" not in few["text"]  # an absent class is not "too few"


def test_intervals_apart_say_so_even_with_few_films():
    apart = site_verdict(figures(0.74, (0.63, 0.85), {"covid": 58, "normal": 21}), REFERENCE)
    assert apart["status"] == "differs" and "do not overlap for covid_auc" in apart["text"]
    assert "lower here" in apart["text"] and "normal 21" in apart["text"]
