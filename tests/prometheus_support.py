"""A real Prometheus for the tests: the binaries, a server on a free port, queries, and the PromQL
expressions the shipped dashboard and alert rules contain."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests import services

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "cxr.json"


def binary(name: str) -> str:
    """``prometheus`` or ``promtool`` (Debian's ``prometheus`` package, installed by .ci/run)."""
    path = shutil.which(name)
    if path is None:
        services.missing_service(f"{name} (apt-get install prometheus)")
    return str(path)


#: What Grafana puts in place of the dashboard's variables when every value is selected
#: (``allValue``), and the rate window a test uses for ``$__rate_interval``.
DASHBOARD_VARIABLES = {"$__rate_interval": "5m", "$model": ".*", "$version": ".*", "$instance": ".*"}


def panel_targets(dashboard: dict[str, Any] | None = None, raw: bool = False) -> Iterator[tuple[str, str]]:
    """``(panel title, expr)`` for every query of every panel, rows included; the variables
    replaced as Grafana would with "All" selected, unless ``raw``."""
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in [] if raw else DASHBOARD_VARIABLES.items():
                expr = expr.replace(name, value)
            yield panel["title"], expr


def rule_exprs() -> Iterator[tuple[str, str]]:
    """``(alert or record name, expr)`` for every rule of the shipped rules file."""
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen

    def api(self, path: str, **params: str) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:  # a bad query answers 400 with a JSON error body
            return json.load(exc)

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def values(self, expr: str) -> list[float]:
        answer = self.query(expr)
        assert answer["status"] == "success", answer
        return [float(sample["value"][1]) for sample in answer["data"]["result"]]


def config_for(targets: dict[str, list[str]], interval: str = "1s") -> dict[str, Any]:
    """The shipped scrape config with its targets replaced by ``targets`` (job → host:port) and
    every interval shortened, so a test sees several scrapes within seconds."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [str(RULES)]
    for job in config["scrape_configs"]:
        job.update(scrape_interval=interval, scrape_timeout=interval)
        job.pop("dns_sd_configs", None)  # compose service names: not resolvable here
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    return config


def start_prometheus(config: dict[str, Any], workdir: Path) -> Prometheus:
    """``prometheus`` on a free localhost port with its own TSDB under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = services.free_port()
    with (workdir / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [binary("prometheus"), f"--config.file={config_path}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={workdir / 'tsdb'}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1):
                return Prometheus(url, process)
        except OSError:
            time.sleep(0.3)
    services.stop_process(process)
    raise RuntimeError(f"Prometheus did not become ready: {(workdir / 'prometheus.log').read_text()[-2000:]}")
