"""The Celery app's configuration and the task's retry policy (no broker needed)."""

from __future__ import annotations

import os
import subprocess
import sys

from cxr.core.errors import StorageUnavailable
from cxr.core.settings import Settings
from worker.app import CLASSIFY_CHUNK, make_app


def test_app_is_json_only_late_acking_and_routes_chunks_to_gpu():
    settings = Settings(
        broker_url="redis://localhost:6379/0", broker_key_prefix="run1:", task_time_limit_s=600
    )
    conf = make_app(settings).conf

    assert conf.task_serializer == "json"
    assert list(conf.accept_content) == ["json"] and list(conf.result_accept_content) == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.task_ignore_result
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_routes[CLASSIFY_CHUNK] == {"queue": "gpu"}
    assert {q.name for q in conf.task_queues} == {"gpu", "train", "default"}
    for options in (conf.broker_transport_options, conf.result_backend_transport_options):
        assert options["visibility_timeout"] >= 3 * conf.task_time_limit
        assert options["global_keyprefix"] == "run1:"
    assert conf.worker_send_task_events and conf.task_send_sent_event


def test_importing_the_worker_package_and_its_tasks_does_not_import_tensorflow():
    code = (
        "import sys, worker, worker.tasks; "
        "sys.exit(int('tensorflow' in sys.modules or 'keras' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_retry_delay_grows_with_jitter_and_is_capped():
    from worker.tasks import is_transient, retry_delay

    settings = Settings(retry_backoff_s=2, retry_backoff_max_s=30)
    for retries, ceiling in ((0, 2), (1, 4), (3, 16), (10, 30)):
        delay = retry_delay(retries, settings)
        assert ceiling / 2 <= delay <= ceiling
    assert is_transient(StorageUnavailable("down"))
    assert not is_transient(ValueError("bad"))


def test_prefork_children_split_the_cores_and_solo_takes_them_all():
    from worker.lifecycle import inference_threads, pool_processes

    assert pool_processes("prefork", 2) == 2
    assert pool_processes(type("TaskPool", (), {"__module__": "celery.concurrency.prefork"}), 4) == 4
    assert pool_processes("solo", 8) == 1 and pool_processes("threads", 8) == 1
    settings = Settings()
    assert inference_threads(settings, processes=2, cores=2) == 1
    assert inference_threads(settings, processes=1, cores=2) == 2
    assert inference_threads(settings, processes=3, cores=2) == 1  # never zero
    assert inference_threads(settings, processes=2, cores=16) == 8
    assert inference_threads(Settings(inference_threads=3), processes=2, cores=16) == 3


def test_thread_variables_set_by_an_operator_win(monkeypatch):
    from worker.lifecycle import configure_inference_threads

    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "5")
    assert configure_inference_threads(Settings(inference_threads=1), processes=1) == 5
    assert os.environ["TF_NUM_INTEROP_THREADS"] == "1"
