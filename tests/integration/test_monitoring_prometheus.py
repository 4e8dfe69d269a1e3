"""A real Prometheus scrapes a real worker and the exporter while a job runs through the cluster;
every PromQL expression of the shipped dashboard and alert rules is then evaluated by it."""

from __future__ import annotations

import math
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import prometheus_support as prom
from tests import services
from tests import worker_support as support
from tests.integration.test_scheduler_celery import cxr, finish, publish
from tests.metrics_catalogue import catalogued_for, exposed

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@pytest.fixture
def exporter(cluster_settings, tmp_path) -> str:
    """``cxr exporter`` as a subprocess on a free port; yields its base URL once healthy."""
    port = services.free_port()
    with (tmp_path / "exporter.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cxr.cli.main", "exporter", "--host", "127.0.0.1", "--port", str(port)],
            env=support.worker_env(cluster_settings, tmp_path / "exporter-data"),
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return '"sql": "ok"' in fetch(f"{url}/healthz")
        except OSError:
            return False

    try:
        support.wait_for(healthy, 60, "exporter /healthz", process, tmp_path / "exporter.log")
        yield url
    finally:
        services.stop_process(process)


@pytest.fixture
def prometheus(cluster_settings, celery_worker, exporter, tmp_path):
    config = prom.config_for(
        {
            "cxr-worker": [f"127.0.0.1:{cluster_settings.metrics_port}"],
            "cxr-exporter": [exporter.removeprefix("http://")],
        }
    )
    server = prom.start_prometheus(config, tmp_path / "prometheus")
    try:
        yield server
    finally:
        services.stop_process(server.process)


def archive(root: Path, seeds: range) -> Path:
    """Synthetic X-rays plus one corrupt file, so the failure series move too."""
    root.mkdir()
    for seed in seeds:
        (root / f"img{seed:03d}.png").write_bytes(support.synthetic_png(seed, size=(48, 48)))
    (root / "broken.png").write_bytes(support.CORRUPT)
    return root


def score(settings, tmp_path: Path, source: Path) -> dict:
    return finish(cxr(settings, tmp_path / "cli", "score", str(source), "--model", "mon@production",
                      "--chunk-size", "2", "--wait", "--json"))  # fmt: skip


def test_dashboard_and_alert_queries_on_a_real_prometheus(cluster_settings, exporter, prometheus, tmp_path):
    settings = cluster_settings
    publish(settings, tmp_path, "mon")
    wait = support.wait_for

    both_up = 'sum(up{cxr_component=~"worker|exporter"})'  # the label the scrape config adds
    wait(lambda: prometheus.values(both_up) == [2.0], 60, "both targets up")
    # A first job loads the model, which creates its counters; the second moves them while
    # Prometheus watches, so every rate() of the dashboard has an increase to show.
    first = score(settings, tmp_path, archive(tmp_path / "warm-up", range(3)))
    wait(lambda: prometheus.values("sum(cxr_model_info)") == [1.0], 30, "the loaded model scraped")
    time.sleep(2)
    second = score(settings, tmp_path, archive(tmp_path / "archive", range(10, 22)))
    assert (first["scored"], second["scored"], second["failed"]) == (3, 12, 1)
    scored = 'sum(cxr_images_scored_total{outcome="scored"})'
    wait(lambda: prometheus.values(scored) == [15.0], 30, "the worker's counters scraped")
    wait(lambda: prometheus.values("sum(cxr_predictions)") == [15.0], 30, "the exporter's SQL read scraped")
    time.sleep(3)  # a few more scrapes and rule evaluations

    without_data = []
    for title, expr in prom.panel_targets():
        answer = prometheus.query(expr)
        assert answer["status"] == "success", (title, expr, answer)
        values = [float(sample["value"][1]) for sample in answer["data"]["result"]]
        finite = [v for v in values if math.isfinite(v)]
        print(f"panel {title!r}: {len(values)} series, {len(finite)} finite: {expr}")
        if not finite:
            without_data.append((title, expr, values))
    assert not without_data, without_data

    for name, expr in prom.rule_exprs():
        answer = prometheus.query(expr)
        assert answer["status"] == "success", (name, expr, answer)
    rules = [rule for group in prometheus.api("rules")["data"]["groups"] for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == {name for name, _ in prom.rule_exprs()}
    assert all(rule["health"] == "ok" for rule in rules), rules
    firing = {alert["labels"]["alertname"] for alert in prometheus.api("alerts")["data"]["alerts"]}
    assert "CxrNoWorkerUp" not in firing

    worker_text = fetch(f"http://127.0.0.1:{settings.metrics_port}/metrics")
    assert exposed(worker_text) == catalogued_for("worker")
    assert exposed(fetch(f"{exporter}/metrics")) == catalogued_for("exporter")
