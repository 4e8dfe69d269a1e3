"""A real ``cxr web`` process on a free port, over an embedded store (SQLite + local objects)
holding a small CNN trained on the shipped sample and one finished job whose archive contains a
file named like an XSS payload. Shared by the API and browser tests of this folder."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cxr.core.db.session import dispose_engines
from cxr.core.settings import Settings
from tests import worker_support as support

TOKEN = "test-token-" + "x" * 24
MAX_UPLOAD_BYTES = 1_000_000
MAX_UPLOAD_PIXELS = 2_000_000
XSS_NAME = "<img src=x onerror=alert(1)>.png"
SAMPLE_FILM = sorted((support.SAMPLE / "covid").glob("*.jpg"))[0]


@dataclass(frozen=True)
class WebServer:
    url: str
    settings: Settings
    archive: Path
    job_id: str
    log: Path

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, follow_redirects=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def web_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATA_DIR=str(data_dir), TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(support.REPO_ROOT), **extra
    )
    return env


@pytest.fixture(scope="package")
def web_server(tmp_path_factory) -> Iterator[WebServer]:
    root = tmp_path_factory.mktemp("web")
    settings = Settings(data_dir=root / "cxr-data")
    from cxr.core.db.migrate import upgrade

    upgrade(settings=settings)
    support.train_sample_model(settings, "cxr")
    archive = root / "archive"
    archive.mkdir()
    for film in sorted(support.SAMPLE.glob("[np]*/*.*"))[:5]:
        shutil.copy(film, archive / film.name)
    shutil.copy(SAMPLE_FILM, archive / SAMPLE_FILM.name)
    (archive / XSS_NAME).write_bytes(support.CORRUPT)  # fails to decode: listed among failures
    dispose_engines()

    port = free_port()
    log = root / "server.log"
    env = web_env(
        settings.data_dir,
        CXR_WEB_TOKEN=TOKEN,
        CXR_WEB_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
        CXR_WEB_MAX_UPLOAD_PIXELS=str(MAX_UPLOAD_PIXELS),
    )
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cxr.cli.main", "web", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"cxr web did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        # The job is submitted through the API, exactly as a hospital system would.
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300) as client:
            answer = client.post("/api/v1/jobs", json={"source": str(archive), "model": "cxr@production"})
        assert answer.status_code == 202, answer.text
        submitted = answer.json()
        assert submitted["total"] == 7 and submitted["status"] == "finished", submitted
        yield WebServer(url, settings, archive, submitted["job_id"], log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert TOKEN not in log.read_text(errors="replace"), "the token must never appear in the server's log"
