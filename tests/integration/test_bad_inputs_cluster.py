"""The bad-input corpus through the real cluster: one chunk, a real worker that survives it."""

from __future__ import annotations

import pytest

from tests.badinput import build_corpus, check_job
from tests.integration.test_scheduler_celery import cxr, finish, publish

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_corpus_in_one_chunk_leaves_the_worker_running(cluster_settings, celery_worker, tmp_path):
    settings = cluster_settings
    publish(settings, tmp_path, "badinput")
    cases = build_corpus(tmp_path / "archive")
    summary = finish(cxr(settings, tmp_path / "cli", "score", str(tmp_path / "archive"), "--model",
                         "badinput@production", "--chunk-size", "100", "--wait", "--json"))  # fmt: skip
    check_job(settings, summary["job_id"], cases, {})
    log = celery_worker.read_text(errors="replace")
    assert "succeeded in" in log and "WorkerLostError" not in log and "Traceback" not in log
