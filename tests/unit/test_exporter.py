"""The exporter's SQL reads and HTTP endpoint on the embedded SQLite database."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cxr.core.db.migrate import upgrade
from cxr.core.db.models import Artifact, Image, Job, JobStatus, ModelVersion, Prediction, TrainingRun
from cxr.core.db.session import dispose_engines, session_scope
from scheduler.exporter import make_registry
from scheduler.exporter.server import make_app
from tests import services


@pytest.fixture
def settings(local_settings):
    upgrade(settings=local_settings)
    yield local_settings
    dispose_engines()


def samples(registry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def add_state(settings) -> None:
    with session_scope(settings) as session:
        for i, (status, total, scored, failed) in enumerate(
            [(JobStatus.RUNNING, 10, 4, 1), (JobStatus.RUNNING, 5, 5, 0), (JobStatus.FINISHED, 3, 3, 0)]
        ):
            session.add(Job(id=f"job{i}", source="s", model_name="m", model_version=2, model_sha256="x",
                            status=status, total=total, scored=scored, failed=failed, skipped=0))  # fmt: skip
        session.add(TrainingRun(name="r", architecture="tiny_cnn", status="failed"))
        session.flush()
        for i, label in enumerate(["covid", "normal", "normal"]):
            session.add(Image(sha256=f"{i:064d}", source_uri="u", bytes=1, format="png", width=1, height=1))
            session.flush()
            prediction = Prediction(image_sha256=f"{i:064d}", model_name="m", model_version=2, label=label,
                                    confidence=0.9, probabilities={label: 0.9}, job_id="job0",
                                    out_of_distribution=i == 2)  # fmt: skip
            session.add(prediction)
            session.flush()
            score = {"shortcut_score": 0.15 + 0.3 * i}
            session.add(Artifact(kind="overlay", uri=f"o{i}", params=score, prediction_id=prediction.id))
            session.add(Artifact(kind="heatmap", uri=f"h{i}", params=score, prediction_id=prediction.id))
        session.add(Artifact(kind="overlay", uri="file:///empty-heatmap", params={"shortcut_score": None}))


def test_sql_series(settings):
    add_state(settings)
    registry, _ = make_registry(settings)
    values = samples(registry)

    assert values[("cxr_jobs", (("status", "running"),))] == 2
    assert values[("cxr_jobs", (("status", "cancelled"),))] == 0  # every status, even at zero
    assert values[("cxr_images_pending", ())] == 5  # 10 - 4 - 1, the finished job and the full one add 0
    assert values[("cxr_training_runs", (("status", "failed"),))] == 1
    assert values[("cxr_training_runs", (("status", "running"),))] == 0
    key = ("cxr_predictions", (("label", "normal"), ("model", "m"), ("version", "2")))
    assert values[key] == 2
    assert values[("cxr_predictions_out_of_distribution", (("model", "m"), ("version", "2")))] == 1
    assert (
        values[("cxr_shortcut_score_count", ())] == 3
    )  # one per image (overlays only); none for an empty heatmap
    assert values[("cxr_shortcut_score_bucket", (("le", "0.2"),))] == 1
    assert values[("cxr_shortcut_score_bucket", (("le", "0.5"),))] == 2
    assert values[("cxr_shortcut_score_bucket", (("le", "+Inf"),))] == 3
    assert values[("cxr_shortcut_score_sum", ())] == pytest.approx(0.15 + 0.45 + 0.75)
    assert values[("cxr_exporter_source_up", (("source", "sql"),))] == 1
    assert not any(name == "cxr_queue_depth" for name, _ in values)  # no broker configured


def test_zeros_instead_of_gaps_for_shift_flags_and_promotion_decisions(settings):
    """A version with predictions and no flag reads 0 flagged (its shift share is 0%, not absent);
    a catalogued model with no gate run reads 0 promoted and 0 kept."""
    with session_scope(settings) as session:
        session.add(ModelVersion(name="n", version=1, sha256="s" * 64, uri="u", architecture="tiny_cnn",
                                 classes=["a", "b"], manifest={}))  # fmt: skip
        session.add(Image(sha256="f" * 64, source_uri="u", bytes=1, format="png", width=1, height=1))
        session.flush()
        session.add(Prediction(image_sha256="f" * 64, model_name="n", model_version=1, label="a",
                               confidence=0.9, probabilities={"a": 0.9},
                               out_of_distribution=False))  # fmt: skip
    registry, _ = make_registry(settings)
    values = samples(registry)
    assert values[("cxr_predictions_out_of_distribution", (("model", "n"), ("version", "1")))] == 0
    assert values[("cxr_promotion_decisions", (("decision", "promoted"), ("model", "n")))] == 0
    assert values[("cxr_promotion_decisions", (("decision", "kept"), ("model", "n")))] == 0


def test_a_failing_database_is_a_source_down_and_an_unhealthy_probe(settings):
    registry, collector = make_registry(settings.model_copy(update={"database_url": (
        f"postgresql+psycopg2://nobody@127.0.0.1:{services.free_port()}/none")}), timeout_s=1)  # fmt: skip
    values = samples(registry)
    assert values[("cxr_exporter_source_up", (("source", "sql"),))] == 0
    assert not any(name == "cxr_jobs" for name, _ in values)  # a gap, not a misleading zero

    status, body = get(make_app(registry, collector), "/healthz")
    assert status.startswith("503")
    assert body["sql"] != "ok"


def test_health_and_metrics_over_http(settings):
    registry, collector = make_registry(settings)
    port = services.free_port()
    from wsgiref.simple_server import make_server

    server = make_server("127.0.0.1", port, make_app(registry, collector))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.status == 200
            assert json.load(response) == {"sql": "ok"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert b"cxr_images_pending 0.0" in response.read()
    finally:
        server.shutdown()
        server.server_close()


def get(app, path: str) -> tuple[str, dict]:
    captured: list[str] = []
    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, lambda s, h: captured.append(s)))
    return captured[0], json.loads(body)
