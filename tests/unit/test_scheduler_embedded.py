"""The main job on the embedded defaults: no broker, SQLite, local object store."""

from __future__ import annotations

import json
import shutil

import pytest
from sqlalchemy import func, select

from cxr.core.db.models import Chunk, Job, JobImage, Prediction
from cxr.core.db.session import dispose_engines, session_scope
from cxr.core.settings import Settings
from scheduler.submit import submit
from scheduler.summary import job_summary
from tests import worker_support as support
from tests.unit.test_cli_models import run_cxr


@pytest.fixture
def settings(tmp_path) -> Settings:
    settings = support.embedded_with_tiny_model(tmp_path, inference_batch_size=4)
    yield settings
    dispose_engines()


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "archive"
    shutil.copytree(support.SAMPLE, root, ignore=shutil.ignore_patterns("*.csv", "*.md"))
    (root / "covid" / "broken.png").write_bytes(support.CORRUPT)
    return root


def test_score_with_wait_json_from_a_shell(settings, archive, tmp_path):
    report = tmp_path / "out" / "report.html"
    out = run_cxr("score", str(archive), "--model", "tiny@production", "--chunk-size", "16", "--wait",
                  "--json", "--report", str(report), data_dir=settings.data_dir)  # fmt: skip
    summary = json.loads(out.stdout)
    assert {k: summary[k] for k in ("model", "total", "scored", "skipped", "failed", "status")} == {
        "model": "tiny@1", "total": 42, "scored": 41, "skipped": 0, "failed": 1, "status": "finished",
    }  # fmt: skip
    assert sum(summary["by_label"].values()) == 41
    assert summary["failures"] == [
        {
            "uri": (archive / "covid" / "broken.png").as_uri(),
            "stage": "decode",
            "reason": summary["failures"][0]["reason"],
        }
    ]
    assert "not a recognised image" in summary["failures"][0]["reason"]
    page = report.read_text()
    assert "Research use only" in page and "Scoring job" in page and summary["job_id"] in page
    csv_path = summary["report_files"]["csv"].removeprefix("file://")
    with open(csv_path) as stream:
        lines = stream.read().splitlines()
    assert len(lines) == 43 and lines[0].startswith("uri,sha256,outcome,label,confidence,p_covid")

    again = json.loads(run_cxr("score", str(archive), "--model", "tiny@production", "--wait", "--json",
                               data_dir=settings.data_dir).stdout)  # fmt: skip
    assert again["job_id"] != summary["job_id"]  # the first job had finished: a new job...
    assert (again["scored"], again["skipped"], again["failed"]) == (0, 41, 1)  # ...that scores nothing
    assert again["by_label"] == summary["by_label"]


def test_a_submission_killed_midway_resumes_and_scores_each_image_once(settings, archive):
    class SchedulerKilled(BaseException):  # a kill, not an error: KeyboardInterrupt, SystemExit
        pass

    def die_after_three_chunks(walked: int, sent: int) -> None:
        if sent == 3:
            raise SchedulerKilled

    with pytest.raises(SchedulerKilled):
        submit(settings, str(archive), "tiny@production", chunk_size=5, on_progress=die_after_three_chunks)
    with session_scope(settings) as session:
        job = session.scalars(select(Job)).one()
        assert job.status.value == "pending" and job.scored + job.failed == 15

    resumed = submit(settings, str(archive), "tiny@production", chunk_size=5)
    assert resumed.resumed and resumed.job_id == job.id and resumed.chunks_sent == 6
    summary = job_summary(settings, job.id)
    assert (summary["status"], summary["total"], summary["scored"], summary["failed"]) == (
        "finished",
        42,
        41,
        1,
    )
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 41
        assert session.scalar(select(func.count()).select_from(JobImage)) == 42
        assert session.scalar(select(func.max(Chunk.deliveries))) == 1  # no chunk ran twice


def test_explanations_are_written_once_with_the_chunk_and_shown_in_the_report(settings, archive, tmp_path):
    from cxr.core.db.models import Artifact
    from cxr.core.storage import read_uri
    from scheduler.report import write_report
    from worker.chunk import run_explain_chunk

    small = tmp_path / "small"
    small.mkdir()
    for path in sorted((archive / "covid").glob("*.jpg"))[:4]:
        (small / path.name).write_bytes(path.read_bytes())
    first = submit(settings, str(small), "tiny@production", explain="all", chunk_size=3)
    with session_scope(settings) as session:
        rows = session.scalars(select(Artifact)).all()
        assert sorted({r.kind for r in rows}) == ["heatmap", "overlay", "rois"]
        assert len(rows) == 12  # three files for each of the four images
        assert all(r.prediction_id is not None and r.job_id == first.job_id for r in rows)
        overlay = next(r for r in rows if r.kind == "overlay")
        assert read_uri(overlay.uri, settings).startswith(b"\x89PNG")
        assert "/artifacts/tiny/1/gradcam/" in overlay.uri

    report = write_report(settings, first.job_id, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert report["html"].endswith("report.html") and "<h2>Shortcut score</h2>" in page
    positives = sum(
        n for label, n in job_summary(settings, first.job_id)["by_label"].items() if label != "normal"
    )
    films = page.count('alt="X-ray ')
    assert films == positives + 4  # each positive in its class's gallery, and all four as borderline
    assert page.count('alt="heatmap overlay"') == films  # every film shown has its overlay beside it

    again = submit(settings, str(small), "tiny@production", explain="all", chunk_size=3)
    assert again.job_id != first.job_id
    model = {"name": "tiny", "version": 1, "sha256": first.model.sha256}
    explained = run_explain_chunk(settings, None, model, [(small / "x").as_uri()], "gradcam")
    assert explained == 0  # a missing file is logged, not raised
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(Artifact)) == 12  # nothing doubled


def test_the_database_allows_one_unfinished_job_per_identity(tmp_path):
    """What two racing schedulers meet: the second insert of the same identity gets the first
    job; once that job ends, the identity is free for a new one."""
    from cxr.core.db.migrate import upgrade
    from cxr.core.settings import Settings
    from modelstore import ResolvedModel
    from scheduler.submit import cancel, create_job

    settings = Settings(data_dir=tmp_path / "data")
    upgrade(settings=settings)
    model = ResolvedModel("m", 1, "0" * 64)
    first = create_job(settings, "file:///a", model, {"explain": "none"})
    second = create_job(settings, "file:///a", model, {"explain": "none"})
    other = create_job(settings, "file:///a", model, {"explain": "all"})
    assert first[1] and second == (first[0], False) and other[1] and other[0] != first[0]
    cancel(settings, first[0])
    third = create_job(settings, "file:///a", model, {"explain": "none"})
    assert third[1] and third[0] != first[0]


def test_a_resume_does_not_resend_a_chunk_running_under_a_live_lease(tmp_path):
    from cxr.core.db.migrate import upgrade
    from cxr.core.settings import Settings
    from modelstore import ResolvedModel
    from scheduler.submit import _prepare_chunk, create_job
    from worker.lease import claim, release

    settings = Settings(data_dir=tmp_path / "data")
    upgrade(settings=settings)
    job_id, _ = create_job(settings, "file:///a", ResolvedModel("m", 1, "0" * 64), {"explain": "none"})
    uris = ["file:///a/1.png", "file:///a/2.png"]
    assert _prepare_chunk(settings, job_id, 0, uris)  # created: send it
    assert _prepare_chunk(settings, job_id, 0, uris)  # queued (perhaps lost with the broker): send again
    holder = claim(settings, job_id, 0, uris)
    assert holder.claimed and not _prepare_chunk(settings, job_id, 0, uris)  # running: its holder finishes it
    release(settings, job_id, 0, holder.owner)
    assert _prepare_chunk(settings, job_id, 0, uris)


def test_a_job_is_not_finished_while_a_chunk_row_is_not_final(tmp_path):
    """Counters that reach the total early (a miscount, a source that grew) cannot close a job
    whose last chunk is still being written."""
    from sqlalchemy import update

    from cxr.core.db.jobs import add_to_counters
    from cxr.core.db.migrate import upgrade
    from cxr.core.db.models import Chunk, ChunkStatus, Job, JobStatus
    from cxr.core.db.session import session_scope
    from cxr.core.settings import Settings
    from modelstore import ResolvedModel
    from scheduler.submit import _close_walk, _prepare_chunk, create_job

    settings = Settings(data_dir=tmp_path / "data")
    upgrade(settings=settings)
    job_id, _ = create_job(settings, "file:///a", ResolvedModel("m", 1, "0" * 64), {"explain": "none"})
    _prepare_chunk(settings, job_id, 0, ["file:///a/1.png"])
    _close_walk(settings, job_id, 1)
    with session_scope(settings) as session:
        add_to_counters(session, job_id, scored=1)
    with session_scope(settings) as session:
        assert session.get(Job, job_id).status == JobStatus.RUNNING
        session.execute(update(Chunk).where(Chunk.job_id == job_id).values(status=ChunkStatus.DONE))
    with session_scope(settings) as session:
        add_to_counters(session, job_id)
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.active_identity) == (JobStatus.FINISHED, None)
