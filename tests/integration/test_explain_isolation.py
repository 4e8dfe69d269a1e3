"""An explanation that cannot be written never fails an image whose prediction stands (issue 22,
case 2): ``cxr score --explain all`` with an object store that refuses every artifact write."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from sqlalchemy import func, select

from cxr.core.db.models import Artifact, Failure, Prediction
from cxr.core.db.session import dispose_engines, session_scope
from tests import fault_support as faults
from tests import worker_support as support

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_artifact_writes_failing_leave_every_prediction_committed(tmp_path):
    settings = support.embedded_with_tiny_model(tmp_path)
    faults.write_archive(tmp_path / "archive", 12, size=(48, 48), seed=7000)
    # A real filesystem error on every artifact write: the local store's ``artifacts`` folder is
    # a regular file, so creating anything under it fails (ENOTDIR), as a full or read-only
    # volume would, while the model files beside it stay readable.
    store_root = settings.data_dir / "objects"
    (store_root / "artifacts").write_bytes(b"not a folder")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(CXR_DATA_DIR=str(settings.data_dir), TF_CPP_MIN_LOG_LEVEL="3", CXR_INFERENCE_BATCH_SIZE="4")
    result = subprocess.run(
        [*faults.CXR, "score", str(tmp_path / "archive"), "--model", "tiny@production", "--explain", "all",
         "--chunk-size", "6", "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert (summary["status"], summary["scored"], summary["failed"]) == ("finished", 12, 0)
    assert "cannot write the explanation" in result.stderr
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 12
        assert session.scalar(select(func.count()).select_from(Artifact)) == 0
        assert session.scalar(select(func.count()).select_from(Failure)) == 0
    dispose_engines()
