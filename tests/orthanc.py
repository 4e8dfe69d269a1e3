"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, started per test with its
own storage folder, free HTTP and DICOM ports on 127.0.0.1 and authentication on, stopped after.

Without Orthanc (``apt-get install orthanc orthanc-dicomweb``; ``.ci/run`` does it) the tests
that need it skip, except under CI, where they fail.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests import services

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USERNAME = "cxr-reader"
PASSWORD = "pacs-Secret-9f3e"


@dataclass(frozen=True)
class Orthanc:
    http_port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_source(self) -> str:
        """The source ``cxr score`` takes: plain HTTP, credentials from settings, never here."""
        return f"dicomweb://127.0.0.1:{self.http_port}/dicom-web"

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "") -> bytes:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        token = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def upload(self, data: bytes) -> dict:
        """Store one DICOM instance through Orthanc's REST API."""
        return json.loads(self.request("POST", "/instances", data, "application/dicom"))


def binary() -> str | None:
    found = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    return found if found and PLUGIN.exists() else None


def _ready(server: Orthanc) -> bool:
    try:
        server.request("GET", "/system")
        return True
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


@contextmanager
def running(workdir: Path) -> Iterator[Orthanc]:
    executable = binary()
    if executable is None:
        services.missing_service(
            "Orthanc with the DICOMweb plugin (apt-get install orthanc orthanc-dicomweb)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = services.free_port(), services.free_port()
    config = {
        "Name": "cxr-test-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USERNAME: PASSWORD},
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log_path = workdir / "orthanc.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([executable, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(http_port, process, log_path)
    try:
        deadline = time.monotonic() + 60
        while not _ready(server):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        services.stop_process(process)
