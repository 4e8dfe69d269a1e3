"""The metrics catalogue (docs/METRICS.md) as data, and the series names an exposition really has."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

CATALOGUE = Path(__file__).resolve().parents[1] / "docs" / "METRICS.md"
_ROW = re.compile(r"^\| `(?P<name>[a-z_:][a-z0-9_:]*)` \| (?P<type>\w+) \| [^|]* \| (?P<sources>[^|]+) \|")


def catalogue() -> dict[str, dict[str, object]]:
    """``series name → {"type", "sources"}`` for every row of the series table."""
    rows: dict[str, dict[str, object]] = {}
    for line in CATALOGUE.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            sources = {part.strip() for part in match["sources"].split(",")}
            rows[match["name"]] = {"type": match["type"], "sources": sources}
    return rows


def catalogued_for(source: str) -> dict[str, str]:
    """``series name → type`` of the rows that ``source`` (worker, exporter) exports."""
    return {name: str(row["type"]) for name, row in catalogue().items() if source in row["sources"]}  # type: ignore[operator]


def exposed(text: str) -> dict[str, str]:
    """``series name → type`` of a text exposition, named as queried (counters with ``_total``).

    The parser turns the ``<name>_created`` samples into gauge families of their own; they are
    bookkeeping of their counter or histogram and are left out (the catalogue says so).
    """
    series: dict[str, str] = {}
    families = list(text_string_to_metric_families(text))
    names = {family.name for family in families}
    for family in families:
        if family.name.endswith("_created") and family.name.removesuffix("_created") in names:
            continue
        name = f"{family.name}_total" if family.type == "counter" else family.name
        series[name] = family.type
    return series
