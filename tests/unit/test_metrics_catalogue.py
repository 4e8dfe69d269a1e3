"""docs/METRICS.md lists exactly what the worker and the exporter expose, with the right types."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, generate_latest

from cxr.core.db.migrate import upgrade
from cxr.core.db.session import dispose_engines
from scheduler.exporter import make_registry
from tests.metrics_catalogue import catalogue, catalogued_for, exposed


def test_catalogue_rows_parse():
    rows = catalogue()
    assert len(rows) >= 20
    for name, row in rows.items():
        assert row["type"] in {"counter", "gauge", "histogram"}, name
        assert row["sources"] <= {"worker", "exporter"}, name
        assert (row["type"] == "counter") == name.endswith("_total"), name


def test_worker_series_match_the_catalogue():
    import worker.metrics  # noqa: F401  (registers the worker's series in the default registry)

    assert exposed(generate_latest(REGISTRY).decode()) == catalogued_for("worker")


@pytest.fixture
def exporter_text(local_settings):
    upgrade(settings=local_settings)
    registry, _ = make_registry(local_settings)
    yield generate_latest(registry).decode()
    dispose_engines()


def test_exporter_series_match_the_catalogue(exporter_text):
    assert exposed(exporter_text) == catalogued_for("exporter")
