"""deploy/k8s renders (kustomize) into resources that a strict Kubernetes schema accepts on two
versions, that pass the Pod Security "restricted" standard, probe the process for liveness and the
dependencies for readiness, keep credentials in the Secret, and carry the monitoring generated from
the one source of each (rules.yml, cxr.json)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from cxr.core.settings import Settings
from tests import k8s_render
from tests import prometheus_support as prom

K8S = prom.DEPLOY / "k8s"
KUSTOMIZATIONS = ["base", "overlays/cpu", "overlays/gpu"]
#: Two Kubernetes versions the manifests must be valid on: an old supported one and the newest
#: the schema package knows.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
CREDENTIALS = {
    f"CXR_{name.upper()}"
    for name, field in Settings.model_fields.items()
    if field.annotation in (SecretStr, SecretStr | None)
} | {"CXR_DATABASE_URL", "CXR_BROKER_URL"}

Doc = dict[str, Any]


def rendered(name: str) -> list[Doc]:
    return k8s_render.build(K8S / name)


def workloads(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    return [(doc, spec) for doc in docs if (spec := k8s_render.pod_spec(doc))]


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = (d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
    return doc


def generator():
    spec = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl: the Python renderer stands in")
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_python_renderer_agrees_with_kubectl_kustomize(name):
    command = ["kubectl", "kustomize", str(K8S / name)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    expected = sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=key)
    assert sorted(rendered(name), key=key) == expected


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_resource_passes_strict_schema_validation(name, version):
    import kubernetes_validate

    for doc in rendered(name):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked by test_monitoring_resources_select_the_cxr_pods
        kubernetes_validate.validate(doc, version, strict=True)


def test_overlays_hold_the_whole_system():
    for name in ("overlays/cpu", "overlays/gpu"):
        kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered(name)}
        assert {
            ("Namespace", "cxr"),
            ("ConfigMap", "cxr-config"),
            ("Secret", "cxr-secrets"),
            ("Job", "cxr-db-upgrade"),
            ("Deployment", "cxr-scoring-worker"),
            ("Deployment", "cxr-cpu-worker"),
            ("Deployment", "cxr-beat"),
            ("Deployment", "cxr-exporter"),
            ("Service", "cxr-exporter"),
            ("PodMonitor", "cxr-workers"),
            ("ServiceMonitor", "cxr-exporter"),
            ("PrometheusRule", "cxr"),
            ("ConfigMap", "cxr-grafana-dashboard"),
        } <= kinds, name
        assert {d["metadata"].get("namespace") for d in rendered(name) if d["kind"] != "Namespace"} == {"cxr"}


def queues(container: Doc) -> set[str]:
    command = container["command"]
    return set(command[command.index("-Q") + 1].split(","))


def test_workers_consume_every_queue_and_beat_runs_alone():
    docs = rendered("base")
    consumed = set()
    for _doc, spec in workloads(docs):
        for container in spec["containers"]:
            if container["command"][:4] == ["celery", "-A", "worker", "worker"]:
                consumed |= queues(container)
    assert consumed == {"gpu", "train", "default"}
    beat = named(docs, "Deployment", "cxr-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}
    assert beat["spec"]["template"]["spec"]["containers"][0]["command"][3] == "beat"


def test_the_migration_job_can_be_applied_again():
    job = named(rendered("base"), "Job", "cxr-db-upgrade")
    assert job["spec"].get("ttlSecondsAfterFinished") or "generateName" in job["metadata"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["cxr", "db", "upgrade"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_pod_passes_the_restricted_pod_security_standard(name):
    """The fields the "restricted" profile checks
    (https://kubernetes.io/docs/concepts/security/pod-security-standards/)."""
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}  # fmt: skip
    for doc, spec in workloads(rendered(name)):
        where = doc["metadata"]["name"]
        pod = spec.get("securityContext", {})
        assert not {"hostNetwork", "hostPID", "hostIPC"} & {k for k, v in spec.items() if v}, where
        for volume in spec.get("volumes", []):
            assert set(volume) - {"name"} <= allowed_volumes, (where, volume)
        for container in spec.get("initContainers", []) + spec["containers"]:
            ctx = container.get("securityContext", {})
            merged = {**pod, **ctx}
            assert merged.get("runAsNonRoot") is True, where
            assert merged.get("runAsUser", 1) != 0, where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert not ctx.get("privileged"), where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            assert set(ctx.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
            assert merged.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost"), where
            assert not any(p.get("hostPort") for p in container.get("ports", [])), where
            # A read-only root filesystem; every writable path is an emptyDir.
            assert ctx.get("readOnlyRootFilesystem") is True, where
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            empty = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
            assert mounts.get("/tmp") in empty, where
    (namespace,) = [d for d in rendered(name) if d["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_liveness_probes_the_process_and_readiness_the_dependencies():
    for doc, spec in workloads(rendered("base")):
        for container in spec["containers"]:
            command = container["command"]
            where = doc["metadata"]["name"]
            if command[:4] == ["celery", "-A", "worker", "worker"]:
                node = command[command.index("-n") + 1]
                assert node.endswith("@%h"), where
                assert "tcpSocket" in container["livenessProbe"], where  # the process, no broker
                probe = " ".join(container["readinessProbe"]["exec"]["command"])
                assert f"celery -A worker inspect ping -d {node.removesuffix('%h')}$HOSTNAME" in probe, where
            elif command[:2] == ["cxr", "exporter"]:
                # /healthz reads SQL: readiness only, never liveness
                assert "tcpSocket" in container["livenessProbe"], where
                assert container["readinessProbe"]["httpGet"]["path"] == "/healthz", where


def test_every_pod_names_only_real_settings_and_credentials_only_in_the_secret():
    docs = rendered("base")
    config = named(docs, "ConfigMap", "cxr-config")
    secret = named(docs, "Secret", "cxr-secrets")
    for var in [*config["data"], *secret["stringData"]]:
        assert var.removeprefix("CXR_").lower() in Settings.model_fields, var
    assert not CREDENTIALS & set(config["data"])
    assert set(secret["stringData"]) >= CREDENTIALS
    assert not any(re.search(r"://[^/@]*:[^/@]+@", value) for value in config["data"].values())
    for doc, spec in workloads(docs):
        for container in spec["containers"]:
            for item in container.get("env", []):
                assert item["name"].removeprefix("CXR_").lower() in Settings.model_fields, item
                assert item["name"] not in CREDENTIALS, item
            refs = {next(iter(ref.values()))["name"] for ref in container.get("envFrom", [])}
            assert refs == {"cxr-config", "cxr-secrets"}, doc["metadata"]["name"]
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert config["data"]["CXR_DATA_DIR"] in mounts, doc["metadata"]["name"]  # writable


def test_images_are_pinned():
    for name in KUSTOMIZATIONS:
        for _, spec in workloads(rendered(name)):
            for container in spec["containers"]:
                _, _, tag = container["image"].partition(":")
                assert tag and tag != "latest", container["image"]


def test_gpu_overlay_puts_the_scoring_worker_on_a_gpu():
    base = named(rendered("base"), "Deployment", "cxr-scoring-worker")
    gpu = named(rendered("overlays/gpu"), "Deployment", "cxr-scoring-worker")
    assert "nvidia.com/gpu" not in json.dumps(base)  # the base scores on any node
    spec = gpu["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"].startswith("cxr-gpu:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    command = container["command"]
    assert queues(container) == {"gpu"} and command[command.index("--concurrency") + 1] == "1"
    assert named(rendered("overlays/gpu"), "Deployment", "cxr-cpu-worker") == named(
        rendered("overlays/cpu"), "Deployment", "cxr-cpu-worker"
    )


def test_monitoring_resources_select_the_cxr_pods():
    docs = rendered("overlays/cpu")
    pod_monitor = named(docs, "PodMonitor", "cxr-workers")
    selector = pod_monitor["spec"]["selector"]["matchLabels"]
    workers = [d for d, spec in workloads(docs) if spec["containers"][0]["command"][3:4] == ["worker"]]
    assert workers
    for worker in workers:
        assert selector.items() <= worker["spec"]["template"]["metadata"]["labels"].items()
        (container,) = worker["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {e["name"]: e["value"] for e in container["env"]}
        assert ports == {"metrics": int(env["CXR_METRICS_PORT"])}
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["relabelings"] == [{"targetLabel": "cxr_component", "replacement": "worker"}]

    service_monitor = named(docs, "ServiceMonitor", "cxr-exporter")
    service = named(docs, "Service", "cxr-exporter")
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = service_monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["relabelings"] == [{"targetLabel": "cxr_component", "replacement": "exporter"}]
    exporter = named(docs, "Deployment", "cxr-exporter")["spec"]["template"]["spec"]["containers"][0]
    assert {p["port"] for p in service["spec"]["ports"]} == {int(exporter["env"][0]["value"])}


def test_prometheus_rule_and_dashboard_configmap_equal_their_sources():
    """One source of truth: the committed copies are what generate.py writes now."""
    for path, text in generator().rendered().items():
        assert path.read_text() == text, f"{path} is stale: run python deploy/k8s/generate.py"
    docs = rendered("overlays/cpu")
    rule = named(docs, "PrometheusRule", "cxr")
    assert rule["spec"]["groups"] == yaml.safe_load(prom.RULES.read_text())["groups"]
    dashboard = named(docs, "ConfigMap", "cxr-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["cxr.json"]) == json.loads(prom.DASHBOARD.read_text())


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path):
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": [], "configMapGenerator": []}))
    with pytest.raises(NotImplementedError):
        k8s_render.build(tmp_path)
