"""Does the model hold up on a new site's own labelled films? A verdict in one paragraph.

A site validation compares two sets of figures with 95 % CIs: the ones the model was published
with (its own test split) and the ones just measured on the site's films. The honest answers are
"the intervals overlap: no sign of a difference", "they do not: the model does worse (or better)
here", and, most often with a few dozen films, "too few films to conclude": with fewer than
``MIN_PER_CLASS`` labelled films in a class a bootstrap interval is tens of points wide, so an
overlap says nothing (intervals that still do not overlap do say something, and the verdict
says so).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelstore.manifest import MetricRecord

#: Labelled films per class below which the CIs are too wide to conclude anything.
MIN_PER_CLASS = 30
#: The figures compared, in the order the verdict names them.
COMPARED = ("covid_auc", "macro_f1", "covid_sensitivity", "covid_specificity")


def reference_record(records: Sequence[MetricRecord]) -> MetricRecord | None:
    """The figures a model was published with: its first record on a test split."""
    return next((r for r in records if "test split" in r.dataset), None)


def _interval(values: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    ci = (values.get("ci95") or {}).get(key)
    return (float(ci[0]), float(ci[1])) if ci and values.get(key) is not None else None


def compare(local: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per compared figure: both values, both CIs and whether the CIs overlap."""
    out = {}
    for key in COMPARED:
        mine, theirs = _interval(local, key), _interval(reference, key)
        if mine is None or theirs is None:
            continue
        out[key] = {
            "local": local[key], "local_ci95": list(mine), "reference": reference[key],
            "reference_ci95": list(theirs), "overlap": mine[0] <= theirs[1] and theirs[0] <= mine[1],
        }  # fmt: skip
    return out


def site_verdict(local: Mapping[str, Any], reference: MetricRecord | None) -> dict[str, Any]:
    """The comparison and its one-paragraph reading (``text``)."""
    counts = {name: n for name, n in (local.get("n_per_class") or {}).items() if n > 0}
    small = {name: n for name, n in counts.items() if n < MIN_PER_CLASS}
    figures = compare(local, reference.values) if reference else {}
    parts = []
    if reference is None:
        parts.append("The model's manifest holds no test-split figures to compare with.")
    elif figures:
        readings = []
        for key, item in figures.items():
            relation = "overlap" if item["overlap"] else (
                "lower here" if item["local"] < item["reference"] else "higher here"
            )  # fmt: skip
            readings.append(
                f"{key} {item['local']:.3f} [{item['local_ci95'][0]:.3f}, {item['local_ci95'][1]:.3f}] "
                f"vs {item['reference']:.3f} [{item['reference_ci95'][0]:.3f}, "
                f"{item['reference_ci95'][1]:.3f}] ({relation})"
            )
        parts.append(f"Here vs {reference.dataset}: " + "; ".join(readings))
    differs = [key for key, item in figures.items() if not item["overlap"]]
    listed = ", ".join(f"{name} {n}" for name, n in sorted(small.items()))
    if differs:
        conclusion = (
            f"The 95 % CIs do not overlap for {', '.join(differs)}: the model does differently on this "
            "site's films than on its own test split; adapt it (cxr adapt) or do not use it here."
        )
        if small:
            conclusion += (
                f" With so few films ({listed}) the intervals are wide, and they still do not "
                "overlap; the figures whose intervals overlap say nothing either way."
            )
        status = "differs"
    elif small:
        conclusion = (
            f"Too few labelled films to conclude ({listed}; fewer than {MIN_PER_CLASS} per class): "
            "the intervals are too wide for an overlap to mean the model transfers. Label more films "
            "before trusting it here."
        )
        status = "too_few"
    elif reference is None or not figures:
        conclusion, status = "Nothing to compare.", "no_reference"
    else:
        conclusion = (
            "The 95 % CIs overlap for every figure compared: no sign that the model does worse here "
            "(which is not proof that it does as well)."
        )
        status = "consistent"
    text = " ".join([*(p + "." for p in parts), conclusion])
    return {"status": status, "text": text, "figures": figures, "n_per_class": counts,
            "reference": reference.dataset if reference else None}  # fmt: skip
