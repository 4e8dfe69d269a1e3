"""The shift score on a real worker: every scored film gets one, every non-radiograph is flagged,
and with CXR_SHIFT_POLICY=abstain none of them is labelled.

The model is trained here, through the real training path, on the sample shipped in
``samples/`` (so its shift reference is the real thing: pooled features of real radiographs),
and published to the S3 model store the worker pulls from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from bench.shift import non_radiograph_files
from cxr.core.db.models import JobImage, Prediction
from cxr.core.db.session import session_scope
from cxr.core.storage import open_store
from tests import services
from tests import worker_support as support

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RADIOGRAPHS = 6


def cxr_score(settings, data_dir: Path, source: str) -> dict:
    env = support.worker_env(settings, data_dir)
    done = subprocess.run(
        [sys.executable, "-m", "cxr.cli.main", "score", source, "--model", "shifty@production", "--wait",
         "--json"], env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return json.loads(done.stdout)


def test_non_radiographs_are_flagged_and_abstained_on(cluster_settings, tmp_path):
    settings = cluster_settings
    assert support.train_sample_model(settings, "shifty") == "shifty@1"
    bucket_uri = settings.storage_url.rsplit("/", 1)[0]
    bucket = open_store(bucket_uri, settings)
    others = non_radiograph_files()
    assert {"grace_hopper.jpg", "CT_small.dcm", "text-page.png"} <= set(others)
    for i, data in enumerate(support.sample_images(RADIOGRAPHS)):
        bucket.put(f"mixed/film-{i}.jpg", data)
    for name, data in others.items():
        bucket.put(f"mixed/other-{name}", data)
        bucket.put(f"abstain/other-{name}", data)

    # abstain first: the flag run then stores predictions for the same bytes, which a later job of
    # this model version would skip as already scored
    for policy, prefix in (("abstain", "abstain"), ("flag", "mixed")):
        worker_settings = settings.model_copy(update={"shift_policy": policy})
        log_path = tmp_path / f"worker-{policy}.log"
        process = support.start_worker(worker_settings, tmp_path / f"worker-{policy}", log_path)
        try:
            support.wait_for(
                lambda p=log_path: support.worker_ready(p), 90, "worker ready", process, log_path
            )
            summary = cxr_score(settings, tmp_path / "cli", f"{bucket_uri}/{prefix}")
        finally:
            services.stop_process(process)
        with session_scope(settings) as session:
            rows = session.execute(
                select(JobImage.uri, JobImage.outcome, JobImage.reason, Prediction.out_of_distribution,
                       Prediction.shift_percentile)
                .outerjoin(Prediction, Prediction.image_sha256 == JobImage.image_sha256)
                .where(JobImage.job_id == summary["job_id"])
            ).all()  # fmt: skip
        by_name = {uri.rsplit("/", 1)[-1]: row for uri, *row in rows}
        assert len(by_name) == summary["total"] and summary["failed"] == 0, by_name
        # Not every non-radiograph reaches the model: the DICOM policy skips the CT and MR slices
        # and uniform images are refused for having no contrast (a uniform grey lies near the
        # "average" film in feature space, where no shift score can be trusted to flag it).
        policy_skips = {f"other-{name}" for name in others if name.endswith(".dcm")}
        blank = {f"other-{name}" for name in others if name.startswith("uniform-")}
        assert {"other-uniform-128.png", "other-CT_small.dcm"} <= blank | policy_skips
        for name in policy_skips:
            assert by_name[name][0] == "skipped" and "DICOM modality not scored" in by_name[name][1]
        for name in blank:
            assert by_name[name][0] == "skipped" and "no contrast" in by_name[name][1]
        photos = {f"other-{name}" for name in others} - policy_skips - blank
        assert {"other-grace_hopper.jpg", "other-text-page.png"} <= photos
        if policy == "flag":
            assert summary["scored"] == RADIOGRAPHS + len(photos)
            assert all(by_name[name][3] is not None for name in by_name if name.startswith("film-"))
            flagged = {name for name, (_, _, ood, _) in by_name.items() if ood}
            assert photos <= flagged
            assert summary["shift"]["flagged"] == len(flagged)
        else:
            assert summary["scored"] == 0 and summary["skipped"] == len(others)
            assert all(by_name[name][0] == "skipped" and "unlike the training data" in by_name[name][1]
                       for name in photos)  # fmt: skip
            assert summary["by_label"] == {}
