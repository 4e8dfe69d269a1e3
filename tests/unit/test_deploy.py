"""The shipped deployment files are consistent with the code: promtool accepts and unit-tests the
Prometheus files; the dashboard imports anywhere and queries real series; compose names only real
settings, agrees on ports with the scrape config and references only files that exist.
Kubernetes: tests/unit/test_deploy_k8s.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from cxr.core.settings import Settings
from tests import prometheus_support as prom

DEPLOY = prom.DEPLOY
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
SCRAPE = yaml.safe_load(prom.PROMETHEUS_CONFIG.read_text())
#: Settings holding credentials: the SecretStr fields and the URLs that carry a password.
CREDENTIALS = {
    f"CXR_{name.upper()}"
    for name, field in Settings.model_fields.items()
    if field.annotation in (SecretStr, SecretStr | None)
} | {"CXR_DATABASE_URL", "CXR_BROKER_URL"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([prom.binary("promtool"), *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_scrape_config_and_its_rules():
    result = promtool("check", "config", str(prom.PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", str(prom.RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_cover_the_required_alerts():
    names = {name for name, _ in prom.rule_exprs()}
    assert {
        "CxrFailureRatioHigh",
        "CxrQueueBacklogGrowing",
        "CxrNoWorkerUp",
        "CxrThroughputCollapse",
        "CxrExporterDown",
        "CxrNoProgress",
        "CxrArchiveUnlikeTrainingData",
    } <= names


RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"


def test_promtool_unit_tests_of_the_rules_pass():
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_stays_quiet():
    cases: dict[str, set[bool]] = {}
    for group in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in group["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    assert {name: {True, False} for name, _ in prom.rule_exprs()} == cases


def alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(prom.RULES.read_text())["groups"] for rule in group["rules"]]


def markdown_anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_links_a_runbook_section_that_exists():
    for rule in alerts():
        path, anchor = rule["annotations"]["runbook_url"].split("#")
        assert anchor in markdown_anchors(DEPLOY.parent / path), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]


def test_no_rule_or_panel_names_a_scrape_job():
    """Job names differ between compose and Kubernetes; targets are selected by cxr_component."""
    exprs = [expr for _, expr in prom.rule_exprs()] + [expr for _, expr in prom.panel_targets()]
    assert not [expr for expr in exprs if re.search(r"\bjob\s*=", expr)]
    for job in SCRAPE["scrape_configs"]:
        (relabel,) = job["relabel_configs"]
        assert relabel["target_label"] == "cxr_component"
        assert relabel["replacement"] in ("worker", "exporter")


DASHBOARD = json.loads(prom.DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def test_dashboard_imports_into_any_grafana():
    """No hard-wired datasource uid: every panel and query uses the ``datasource`` variable, and
    ``__inputs`` lets the import dialog pick a Prometheus."""
    (ds_input,) = DASHBOARD["__inputs"]
    assert (ds_input["type"], ds_input["pluginId"]) == ("datasource", "prometheus")
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    assert {"model", "version", "instance"} <= set(variables)
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for item in [*dashboard_panels(), *(t for p in dashboard_panels() for t in p["targets"])]:
        assert item["datasource"] == expected, item.get("title", item.get("expr"))
    for name in ("model", "version", "instance"):
        assert variables[name]["datasource"] == expected
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    assert len(dashboard_panels()) >= 20
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_panels_have_thresholds_units_and_the_rate_interval():
    for panel in dashboard_panels():
        defaults = panel["fieldConfig"]["defaults"]
        title = panel["title"]
        assert defaults.get("unit"), title
        if panel["type"] == "stat":  # 0 workers up must not show green
            assert len(defaults["thresholds"]["steps"]) >= 2, title
        for _, expr in prom.panel_targets({"panels": [panel]}, raw=True):
            assert "$__rate_interval" in expr or not re.search(r"\brate\(", expr), (title, expr)
            counted = re.search(r"\brate\(cxr_images_scored_total|rate\(cxr_explanations_total", expr)
            if counted and "/" not in expr:  # a count per second, never a bare 'short'
                assert defaults["unit"].endswith("/s"), title
            if "cxr_stage_duration_seconds_sum" in expr:  # seconds per second: a busy share
                assert defaults["unit"] == "percentunit", title


def test_dashboard_shows_the_signals_operators_asked_for():
    exprs = " ".join(expr for _, expr in prom.panel_targets(raw=True))
    for series in [
        "cxr_explanations_total",
        "cxr_model_load_seconds",
        "cxr_model_cache_hits_total",
        "cxr_predictions_out_of_distribution",
        "cxr_promotion_decisions",
        "cxr_queue_depth",
        'up{cxr_component="exporter"}',
    ]:
        assert series in exprs, series


def test_every_dashboard_query_is_valid_promql(tmp_path):
    """promtool parses each panel query (variables replaced as Grafana does) as a recording rule."""
    rules = [{"record": f"cxr:panel{i}", "expr": expr} for i, (_, expr) in enumerate(prom.panel_targets())]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_only_catalogued_series():
    from tests.metrics_catalogue import catalogue

    known = set(catalogue()) | {"up"}
    exprs = [expr for _, expr in prom.panel_targets(raw=True)] + [expr for _, expr in prom.rule_exprs()]
    exprs += [v["definition"] for v in DASHBOARD["templating"]["list"] if "definition" in v]
    for expr in exprs:
        for name in re.findall(r"\b((?:cxr|process|python)_[a-z0-9_]+|up)\s*[{\[),]", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in known or base in known, (name, expr)


def env_names(environment: Any) -> dict[str, str]:
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(k): str(v) for k, v in (environment or {}).items()}


def test_compose_names_only_real_settings():
    for name, service in COMPOSE["services"].items():
        for var in env_names(service.get("environment")):
            if var.startswith("CXR_"):
                assert var.removeprefix("CXR_").lower() in Settings.model_fields, (name, var)


def test_compose_references_existing_files():
    for name, service in COMPOSE["services"].items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, volume)


def test_compose_has_the_services_of_the_system():
    services = set(COMPOSE["services"])
    assert {"redis", "postgres", "minio", "minio-init", "migrate", "cpu-worker", "beat", "cli"} <= services
    assert {"scoring-worker", "gpu-worker", "exporter", "prometheus", "alertmanager", "grafana"} <= services
    gpu = COMPOSE["services"]["gpu-worker"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert COMPOSE["services"]["migrate"]["command"] == ["cxr", "db", "upgrade"]


def test_compose_is_valid_against_the_compose_spec():
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    result = subprocess.run(
        [*command, str(DEPLOY / "docker-compose.yml")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def worker_queues(service: dict[str, Any]) -> set[str]:
    command = service.get("command", [])
    if command[:4] != ["celery", "-A", "worker", "worker"]:
        return set()
    return set(command[command.index("-Q") + 1].split(","))


def default_profiles() -> set[str]:
    env = dict(line.split("=", 1) for line in (DEPLOY / ".env").read_text().splitlines() if "=" in line)
    return {p for p in env["COMPOSE_PROFILES"].split(",") if p and not p.startswith("#")}


@pytest.mark.parametrize("profiles", [None, {"cpu"}, {"gpu"}])
def test_every_queue_has_exactly_one_scoring_consumer_per_profile(profiles):
    """A CPU-only host scores by default (deploy/.env); the gpu profile swaps in the GPU worker."""
    active = default_profiles() if profiles is None else profiles
    running = {n: s for n, s in COMPOSE["services"].items() if set(s.get("profiles", [])) <= active}
    consumers = [n for n, s in running.items() if "gpu" in worker_queues(s)]
    assert len(consumers) == 1, (active, consumers)
    assert {"train", "default"} <= set().union(*(worker_queues(s) for s in running.values()))
    assert default_profiles() == {"cpu"}


def test_compose_images_are_pinned():
    for name, service in COMPOSE["services"].items():
        image, _, tag = service["image"].rpartition(":")
        # a version with at least a minor number: never 'latest', never a moving '7-alpine'
        assert image and re.match(r"v?\d+\.\d+|RELEASE\.", tag), (name, service["image"])


def test_the_cli_and_scoring_workers_see_the_archive_at_the_same_path():
    services = COMPOSE["services"]
    mount = services["cli"]["volumes"]
    assert mount == services["scoring-worker"]["volumes"] == services["gpu-worker"]["volumes"]
    (volume,) = mount
    default = re.fullmatch(r"\$\{CXR_ARCHIVE_DIR:-([^}]+)\}:/archive:ro", volume)
    assert default and (DEPLOY / default[1] / "manifest.csv").is_file()  # the worked example's films
    assert services["cli"]["entrypoint"] == ["cxr"] and services["cli"]["profiles"] == ["cli"]


def test_prometheus_sends_alerts_to_the_compose_alertmanager():
    (manager,) = SCRAPE["alerting"]["alertmanagers"]
    (target,) = manager["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert f"{port}:{port}" in COMPOSE["services"][host]["ports"]
    config = COMPOSE["services"][host]["volumes"][0].split(":")[0]
    result = subprocess.run(
        [prom.binary("amtool"), "check-config", str(DEPLOY / config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def concurrency(command: list[str]) -> int:
    return int(command[command.index("--concurrency") + 1]) if "--concurrency" in command else 1


def metrics_ports(service: dict[str, Any]) -> int:
    """Ports a worker serves: one for the whole pool in multiprocess mode, else one per process."""
    one_port = "PROMETHEUS_MULTIPROC_DIR" in env_names(service["environment"])
    return 1 if one_port else concurrency(service["command"])


def test_worker_scrape_targets_match_the_compose_metrics_ports():
    """Every process of every worker service is found by the DNS discovery, and nothing else."""
    (config,) = (c for c in SCRAPE["scrape_configs"] if c["job_name"] == "cxr-worker")
    scraped = {(name, sd["port"]) for sd in config["dns_sd_configs"] for name in sd["names"]}
    expected = {
        (name, int(env_names(s["environment"])["CXR_METRICS_PORT"]) + i)
        for name, s in COMPOSE["services"].items()
        if worker_queues(s)
        for i in range(metrics_ports(s))
    }
    assert scraped == expected


def scrape_targets(job: str) -> list[str]:
    (config,) = (c for c in SCRAPE["scrape_configs"] if c["job_name"] == job)
    return [target for group in config["static_configs"] for target in group["targets"]]


def test_exporter_scrape_target_matches_its_port():
    (target,) = scrape_targets("cxr-exporter")
    host, port = target.rsplit(":", 1)
    environment = env_names(COMPOSE["services"][host]["environment"])
    assert int(port) == int(environment.get("CXR_EXPORTER_PORT", Settings().exporter_port))
    assert COMPOSE["services"][host]["command"][:2] == ["cxr", "exporter"]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_copy_existing_files_and_run_as_non_root(dockerfile):
    text = (DEPLOY / dockerfile).read_text()
    root = DEPLOY.parent
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        for source in line.split()[:-1]:
            assert (root / source).exists(), (dockerfile, source)
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and users[-1] not in ("root", "0"), dockerfile


def test_gpu_image_keeps_the_gpu_build():
    text = (DEPLOY / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM tensorflow/tensorflow:\$\{TF_VERSION\}-gpu$", text, flags=re.M)
    assert 'pip install ".[gpu,dicom]"' in text and "pip uninstall -y tensorflow-cpu" in text


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_images_decode_compressed_dicom(dockerfile):
    """PACS exports are mostly JPEG-lossless, JPEG-LS or JPEG 2000: both images need the decoders."""
    assert re.search(r'pip install "\.\[[a-z,]*\bdicom\b[a-z,]*\]"', (DEPLOY / dockerfile).read_text())


def test_every_deploy_path_exists():
    for path in [
        "grafana/dashboards/cxr.json",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/cxr.yml",
        "prometheus/prometheus.yml",
        "prometheus/rules.yml",
        "prometheus/rules_test.yml",
        "alertmanager/alertmanager.yml",
        "k8s/generate.py",
        ".env",
    ]:
        assert (DEPLOY / path).is_file(), path
    assert Path(prom.RULES).name in SCRAPE["rule_files"]
