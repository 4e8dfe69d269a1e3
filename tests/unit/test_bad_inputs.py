"""Every kind of bad file an archive holds, scored in one chunk beside good images.

Each file must be scored or become a failure row with the right stage and a reason that says
why; the good images of the same chunk must be scored; the process must survive; and the job's
counters must add up. Runs on the embedded defaults, in-process, through ``submit``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxr.core.db.session import dispose_engines
from cxr.core.settings import Settings
from scheduler.submit import submit
from tests import worker_support as support
from tests.badinput import build_corpus, check_job, job_outcomes, write_list_file


@pytest.fixture
def settings(tmp_path) -> Settings:
    settings = support.embedded_with_tiny_model(tmp_path, inference_batch_size=8)
    yield settings
    dispose_engines()


def test_every_bad_file_in_a_folder_is_accounted_for_with_its_reason(settings, tmp_path):
    cases = build_corpus(tmp_path / "archive")
    assert len(cases) >= 25
    submitted = submit(settings, str(tmp_path / "archive"), "tiny@production", chunk_size=100)
    check_job(settings, submitted.job_id, cases, {})


def test_every_bad_line_in_a_list_file_is_accounted_for_with_its_reason(settings, tmp_path):
    cases, uri_lines = write_list_file(tmp_path / "archive", tmp_path / "images.txt")
    submitted = submit(settings, str(tmp_path / "images.txt"), "tiny@production", chunk_size=100)
    check_job(settings, submitted.job_id, cases, uri_lines)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod-000 file; the FIFO case covers it")
def test_an_unreadable_file_fails_at_fetch(settings, tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    (root / "good.png").write_bytes(support.synthetic_png(1, (64, 64)))
    locked = root / "locked.png"
    locked.write_bytes(support.synthetic_png(2, (64, 64)))
    locked.chmod(0)
    submitted = submit(settings, str(root), "tiny@production")
    outcomes = job_outcomes(settings, submitted.job_id)
    assert outcomes[locked.as_uri()][:2] == ("failed", "fetch")
    assert "permission denied" in outcomes[locked.as_uri()][2]
    assert outcomes[(root / "good.png").as_uri()][0] == "scored"


def test_the_corpus_files_really_are_what_they_claim(tmp_path):
    """Guards the corpus itself: a case that silently became a plain image would test nothing."""
    from PIL import Image

    root = tmp_path / "archive"
    build_corpus(root)
    with Image.open(root / "sixteen-bit.png") as image:
        assert image.mode.startswith("I")
    with Image.open(root / "cmyk.jpg") as image:
        assert image.mode == "CMYK"
    with Image.open(root / "palette-alpha.png") as image:
        assert image.mode == "P" and "transparency" in image.info
    with Image.open(root / "exif-rotated.jpg") as image:
        assert image.getexif()[0x0112] == 6
    assert Path(root / "fifo.png").is_fifo()


def test_cxr_score_without_a_broker_exits_0_and_accounts_for_every_file(tmp_path):
    """The command a user runs: one bad file (a DICOM whose VOI LUT makes pydicom raise
    struct.error, among the rest of the corpus) costs that file, not the job or the process."""
    import json

    from tests.models import save_tiny_cnn
    from tests.unit.test_cli_models import run_cxr

    data = tmp_path / "data"
    model = save_tiny_cnn(tmp_path / "seed.keras", size=32, channels=3, classes=3)
    run_cxr("models", "import", str(model), "--name", "seed", "--classes", "covid,normal,pneumonia",
            "--image-size", "32", "--alias", "production", data_dir=data)  # fmt: skip
    cases = build_corpus(tmp_path / "archive")
    result = run_cxr("score", str(tmp_path / "archive"), "--model", "seed@production", "--wait", "--json",
                     data_dir=data, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["total"] == len(cases)
    assert summary["scored"] == sum(case.outcome == "scored" for case in cases)
    assert summary["failed"] == sum(case.outcome == "failed" for case in cases)
    assert any(f["uri"].endswith("malformed-voi-lut.dcm") for f in summary["failures"])
