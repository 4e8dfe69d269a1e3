"""``cxr jobs list`` as a user sees it in a pipe: whole ids and counts, never cut."""

from __future__ import annotations

from cxr.core.db.migrate import upgrade
from cxr.core.db.models import Job, JobStatus
from cxr.core.db.session import dispose_engines, session_scope
from cxr.core.settings import Settings
from tests.unit.test_cli_models import run_cxr


def test_jobs_list_in_a_pipe_shows_whole_ids_and_counts(tmp_path):
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    upgrade(settings=settings)
    with session_scope(settings) as session:
        source = "file:///" + "very/long/archive/path/" * 6
        counts = {"total": 123456, "scored": 120000, "skipped": 3000, "failed": 456}
        job = Job(id="d67a8c0ffee12345", source=source, model_name="m", model_version=12,
                  model_sha256="x" * 64, status=JobStatus.RUNNING, **counts)  # fmt: skip
        session.add(job)
    dispose_engines()
    listed = run_cxr("jobs", "list", data_dir=data).stdout
    assert "d67a8c0ffee12345" in listed and "running" in listed
    for count in ("123456", "120000", "3000", "456"):
        assert count in listed
    assert "…" not in listed
