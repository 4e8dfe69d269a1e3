"""A small kustomize for the tests: renders ``deploy/k8s`` without the ``kustomize`` binary.

It supports exactly the features the shipped kustomizations use (resources, components with
resources, namespace, images, JSON 6902 patches) and refuses anything else, so a kustomization
that grows a feature fails here instead of rendering wrongly. Where ``kubectl`` is installed, a
test checks that it renders the same documents as ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
_KEYS = {"apiVersion", "kind", "namespace", "resources", "components", "images", "patches"}

Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def build(root: Path) -> list[Doc]:
    """The documents ``kubectl kustomize root`` prints (in file order, not kustomize's)."""
    spec = yaml.safe_load((root / "kustomization.yaml").read_text())
    unknown = set(spec) - _KEYS
    if unknown:
        raise NotImplementedError(f"{root}: kustomization keys {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = root / entry
        docs += build(path) if path.is_dir() else load(path)
    for entry in spec.get("components", []):
        docs += build(root / entry)
    if "namespace" in spec:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for container in _containers(docs):
            _retag(container, image)
    for patch in spec.get("patches", []):
        target = patch["target"]
        for doc in docs:
            if doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]:
                for op in yaml.safe_load(patch["patch"]):
                    _apply(doc, op)
    return docs


def pod_spec(doc: Doc) -> Doc | None:
    """The pod spec of a workload document, None for anything else."""
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"] if doc["kind"] == "Pod" else None


def _containers(docs: list[Doc]) -> list[Doc]:
    specs = [spec for spec in map(pod_spec, docs) if spec]
    return [c for spec in specs for c in spec.get("initContainers", []) + spec["containers"]]


def _retag(container: Doc, image: Doc) -> None:
    name, _, tag = container["image"].partition(":")
    if name == image["name"]:
        name = image.get("newName", name)
        tag = image.get("newTag", tag)
        container["image"] = f"{name}:{tag}" if tag else name


def _apply(doc: Doc, op: Doc) -> None:
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in op["path"].split("/")[1:]]
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) and last != "-" else last
    if op["op"] in ("add", "replace"):
        if isinstance(node, list) and key == "-":
            node.append(copy.deepcopy(op["value"]))
        elif isinstance(node, list) and op["op"] == "add":
            node.insert(key, copy.deepcopy(op["value"]))
        else:
            if op["op"] == "replace" and (key not in node if isinstance(node, dict) else key >= len(node)):
                raise KeyError(f"replace of a missing path {op['path']}")
            node[key] = copy.deepcopy(op["value"])
    elif op["op"] == "remove":
        del node[key]
    else:
        raise NotImplementedError(f"patch op {op['op']}")
