"""A tamper-evident model store (issue 22, case 6): manifests rewritten in the object store are
refused with one line naming the version, by the CLI and by a real worker; a model file that
disagrees with its manifest is refused at load; a garbage alias breaks only itself."""

from __future__ import annotations

import json
import subprocess

import pytest
from sqlalchemy import select

from cxr.core.db.models import Failure
from cxr.core.db.session import session_scope
from cxr.core.errors import ManifestError
from cxr.core.imaging import InputContract
from modelstore import open_model_store
from tests import fault_support as faults
from tests import services
from tests import worker_support as support
from tests.integration.test_scheduler_celery import publish

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cxr(settings, tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*faults.CXR, *args], env=support.worker_env(settings, tmp_path / "cli"), capture_output=True,
        text=True, timeout=180,
    )  # fmt: skip


def _error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def _rewrite_manifest(store, name: str, version: int, **changes) -> None:
    key = f"models/{name}/{version}/manifest.json"
    data = json.loads(store.storage.get(key))
    data.update(changes)
    store.storage.put(key, json.dumps(data).encode(), content_type="application/json")


def test_reordered_classes_are_refused_by_the_cli_and_by_a_worker(cluster_settings, tmp_path):
    settings = cluster_settings
    publish(settings, tmp_path, "reorder")
    store = open_model_store(settings)
    faults.write_archive(tmp_path / "archive", 6, size=(48, 48), seed=9300)
    job_id = faults.submit_job(settings, tmp_path / "cli", str(tmp_path / "archive"), "reorder@production", 3)
    classes = store.manifest("reorder", 1).classes
    _rewrite_manifest(store, "reorder", 1, classes=[classes[1], classes[0], *classes[2:]])  # labels permuted

    for args in (("models", "pull", "reorder@1"), ("models", "show", "reorder@production"),
                 ("score", str(tmp_path / "archive"), "--model", "reorder@production")):  # fmt: skip
        line = _error(_cxr(settings, tmp_path, *args))
        assert "reorder@1: manifest.json does not match the digest recorded in" in line, line

    # The job submitted before the rewrite pinned the manifest's digest: a worker refuses too.
    log_path = tmp_path / "worker.log"
    worker = support.start_worker(settings, tmp_path / "worker", log_path)
    try:
        support.wait_for(lambda: faults.job_status(settings, job_id) == "finished", 120, "the job", worker,
                         log_path)  # fmt: skip
    finally:
        services.stop_process(worker)
    job = faults.assert_exactly_once(settings, job_id, "reorder", 6)
    assert (job.scored, job.failed) == (0, 6)
    with session_scope(settings) as session:
        reasons = {(f.stage, f.reason) for f in session.scalars(select(Failure))}
    assert len(reasons) == 1
    stage, reason = reasons.pop()
    assert stage == "model" and "reorder@1: manifest.json does not match the digest" in reason


def test_a_manifest_claiming_another_versions_file_is_refused(cluster_settings, tmp_path):
    settings = cluster_settings
    publish(settings, tmp_path, "swap")
    store = open_model_store(settings)
    second = store.publish(
        "swap", support.build_model(tmp_path / "swap2.keras", seed=11), architecture="tiny_cnn",
        classes=support.CLASSES, input_contract=support.CONTRACT, output="softmax",
    )  # fmt: skip
    first = store.manifest("swap", 1)
    assert _cxr(settings, tmp_path, "models", "pull", "swap@1").returncode == 0  # v1's file is cached
    _rewrite_manifest(store, "swap", second.version, sha256=first.sha256, size_bytes=first.size_bytes)

    line = _error(_cxr(settings, tmp_path, "models", "pull", f"swap@{second.version}"))
    assert (
        f"swap@{second.version}: manifest.json does not match the digest recorded in the SQL catalogue"
        in line
    )


def test_a_garbage_alias_breaks_only_itself(cluster_settings, tmp_path):
    settings = cluster_settings
    publish(settings, tmp_path, "good")
    publish(settings, tmp_path, "bad")
    store = open_model_store(settings)
    store.storage.put("models/bad/aliases/production.json", b"\x00 this is not json")
    store.storage.put("models/bad/aliases/rounded.json", json.dumps({"version": 2.9}).encode())
    store.storage.put("models/bad/aliases/truthy.json", json.dumps({"version": True}).encode())

    listed = _cxr(settings, tmp_path, "models", "list", "--json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    data = json.loads(listed.stdout)
    by_name = {row["name"]: row for row in data["models"]}
    assert by_name["good"]["aliases"] == {"production": 1}
    assert by_name["bad"]["aliases"] == {}
    assert by_name["bad"]["broken_aliases"] == ["production", "rounded", "truthy"]
    assert "alias bad@production:" in listed.stderr and "Traceback" not in listed.stderr

    for alias in ("production", "rounded", "truthy"):
        line = _error(_cxr(settings, tmp_path, "models", "pull", f"bad@{alias}"))
        assert f"models/bad/aliases/{alias}.json is invalid" in line
    assert "cxr models promote" in line


def test_a_model_file_that_disagrees_with_its_manifest_is_refused_at_load(cluster_settings, tmp_path):
    """Published with a 64-px contract, the file takes 32 px: the runtime refuses to load it
    rather than feed it images of the wrong size."""
    from modelstore.runtime import ModelRuntime

    settings = cluster_settings
    store = open_model_store(settings)
    wrong = InputContract(height=64, width=64, channels=1, normalization="unit")
    store.publish(
        "mismatch", support.build_model(tmp_path / "m.keras"), architecture="tiny_cnn",
        classes=support.CLASSES, input_contract=wrong, output="softmax",
    )  # fmt: skip
    with pytest.raises(
        ManifestError, match=r"mismatch@1: the manifest says input 64×64×1, the model file takes 32×32×1"
    ):
        ModelRuntime.load(store, "mismatch@1", warm_up=False)
    store.publish(
        "twoclass", support.build_model(tmp_path / "t.keras"), architecture="tiny_cnn",
        classes=["normal", "pneumonia"], input_contract=support.CONTRACT, output="softmax",
    )  # fmt: skip
    with pytest.raises(ManifestError, match=r"twoclass@1: .* 2 classes \(2 units\), the model file has 3"):
        ModelRuntime.load(store, "twoclass@1", warm_up=False)
