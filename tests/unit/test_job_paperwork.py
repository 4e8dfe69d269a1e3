"""A job writes its own report and CSV when it ends, on the embedded defaults (SQLite, local
store, no broker), and the `cxr jobs` commands find, copy and export them."""

from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser

import pytest
from sqlalchemy import select

from cxr.core.db.models import Job, JobStatus
from cxr.core.db.session import dispose_engines, session_scope
from cxr.core.storage import read_uri
from modelstore import open_model_store
from scheduler.report import duration_text, render_html
from scheduler.submit import submit
from scheduler.summary import job_summary
from tests import worker_support as support
from tests.unit.test_cli_models import run_cxr


def test_a_finished_job_has_its_report_and_csv_and_the_commands_find_them(tmp_path):
    settings = support.embedded_with_tiny_model(tmp_path)
    archive = tmp_path / "archive"
    archive.mkdir()
    for i, data in enumerate(support.sample_images(3)):
        (archive / f"film{i}.png").write_bytes(data)
    (archive / "broken.png").write_bytes(support.CORRUPT)
    dispose_engines()
    data_dir = settings.data_dir

    scored = json.loads(run_cxr("score", str(archive), "--model", "tiny@production", "--json",
                                data_dir=data_dir).stdout)  # fmt: skip
    job_id = scored["job_id"]
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        report_uri, csv_uri = job.report_uri, job.csv_uri
    assert report_uri and report_uri.endswith("report.html")  # written by the job's own end
    assert csv_uri and csv_uri.endswith("results.csv")
    rows = list(csv.DictReader(io.StringIO(read_uri(csv_uri, settings).decode())))
    assert len(rows) == 4 and sorted(r["outcome"] for r in rows) == ["failed", "scored", "scored", "scored"]

    shown = run_cxr("jobs", "show", job_id, data_dir=data_dir).stdout
    assert f"report: {report_uri}" in shown and f"per-image CSV: {csv_uri}" in shown
    waited = run_cxr("jobs", "wait", job_id, data_dir=data_dir)  # an ended job: at once, exit 0
    assert f"job {job_id} finished: 4 images, 3 scored, 0 skipped, 1 failed" in waited.stdout
    assert f"report: {report_uri}" in waited.stdout

    out = tmp_path / "copy" / "x.html"
    run_cxr("jobs", "report", job_id, "--out", str(out), data_dir=data_dir)
    assert out.read_bytes() == read_uri(report_uri, settings)

    exported = tmp_path / "export.csv"
    said = run_cxr("jobs", "export", job_id, "--csv", str(exported), data_dir=data_dir).stdout
    assert "4 images" in said
    assert list(csv.DictReader(exported.open())) == rows


def test_an_empty_folder_warns_and_exits_3(tmp_path):
    settings = support.embedded_with_tiny_model(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    dispose_engines()
    done = run_cxr("score", str(empty), "--model", "tiny@production", data_dir=settings.data_dir, check=False)
    assert done.returncode == 3, done.stderr
    assert "found no image" in done.stderr


class _Attributes(HTMLParser):
    """Every tag and attribute name of a page, as a browser's parser would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes |= {name for name, _ in attrs}


def test_a_hostile_file_name_is_text_in_the_report(tmp_path):
    settings = support.embedded_with_tiny_model(tmp_path)
    archive = tmp_path / "archive"
    archive.mkdir()
    hostile = "<img src=x onerror=alert(1)>.png"
    (archive / hostile).write_bytes(support.sample_images(1)[0])
    (archive / "<svg onload=alert(2)>.png").write_bytes(support.CORRUPT)  # a failure reason too
    job = submit(settings, str(archive), "tiny@production", explain="all")
    page = render_html(settings, job.job_id)
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in page  # shown, as text
    parsed = _Attributes()
    parsed.feed(page)
    assert not {"onerror", "onload"} & parsed.attributes and "svg" not in parsed.tags
    assert "&lt;svg onload=alert(2)&gt;.png" in page  # its failure is listed by name
    assert "Model card: tiny@1" in page and "Borderline films" in page
    assert 'href="results.csv"' in page


def test_durations_read_as_people_write_them():
    assert [duration_text(s) for s in (12.44, 187, 7500)] == ["12.4 s", "3 min 07 s", "2 h 05 min"]


def test_a_submission_that_breaks_off_leaves_its_job_failed_not_pending(tmp_path):
    settings = support.embedded_with_tiny_model(tmp_path)
    archive = tmp_path / "archive"
    archive.mkdir()
    for i, data in enumerate(support.sample_images(3)):
        (archive / f"film{i}.png").write_bytes(data)

    def progress(walked: int, sent: int) -> None:  # a caller whose display dies mid-walk
        raise RuntimeError("terminal went away")

    with pytest.raises(RuntimeError):
        submit(settings, str(archive), "tiny@production", chunk_size=2, on_progress=progress)
    with session_scope(settings) as session:
        (job,) = session.scalars(select(Job)).all()
        assert job.status == JobStatus.FAILED and job.active_identity is None
        assert job.error == "submission failed: RuntimeError: terminal went away"
    again = submit(settings, str(archive), "tiny@production", chunk_size=2)  # a new job, not blocked
    assert again.job_id != job.id and not again.resumed
    assert job_summary(settings, again.job_id)["status"] == "finished"


def test_promote_takes_name_at_version_like_every_other_command(tmp_path):
    settings = support.embedded_with_tiny_model(tmp_path)
    open_model_store(settings).publish(
        "tiny", support.build_model(tmp_path / "two.keras", seed=8), architecture="tiny_cnn",
        classes=support.CLASSES, input_contract=support.CONTRACT, output="softmax",
    )  # fmt: skip
    dispose_engines()
    data_dir = settings.data_dir
    moved = json.loads(run_cxr("models", "promote", "tiny@2", "--alias", "production", "--json",
                               data_dir=data_dir).stdout)  # fmt: skip
    assert moved == {"name": "tiny", "alias": "production", "version": 2}
    back = run_cxr("models", "promote", "tiny", "1", "--alias", "production", data_dir=data_dir).stdout
    assert "tiny@production → 1" in back
    latest = run_cxr("models", "promote", "tiny@latest", "--alias", "staging", data_dir=data_dir).stdout
    assert "tiny@staging → 2" in latest
    refused = run_cxr("models", "promote", "tiny", "--alias", "production", data_dir=data_dir, check=False)
    assert refused.returncode == 1 and "NAME@VERSION" in refused.stderr


def test_each_positive_class_gets_its_own_gallery_and_the_borderline_films_are_nearest_a_tie():
    from scheduler.report import GALLERY_PER_CLASS, _pick
    from scheduler.summary import ImageRow

    def row(uri: str, covid: float, pneumonia: float) -> ImageRow:
        probs = {"covid": covid, "normal": 1 - covid - pneumonia, "pneumonia": pneumonia}
        label = max(probs, key=probs.__getitem__)
        return ImageRow(uri, uri * 64, "scored", label, probs[label], probs, None, None, None, None, None)

    rows = [row(f"p{i:02d}", 0.05, 0.90 - i / 100) for i in range(20)]  # many confident pneumonia
    rows += [row("c1", 0.60, 0.10), row("c2", 0.55, 0.20)]  # two covid calls, less confident
    rows += [row("edge", 0.41, 0.40)]  # a near tie
    manifest = type("M", (), {"classes": ["covid", "normal", "pneumonia"], "operating_points": {}})()
    picks = _pick(iter(rows), manifest)
    covid = [r.uri for *_, r in sorted(picks.top["covid"], reverse=True)]
    pneumonia = [r.uri for *_, r in sorted(picks.top["pneumonia"], reverse=True)]
    assert covid == ["c1", "c2", "edge"]
    assert pneumonia == [f"p{i:02d}" for i in range(GALLERY_PER_CLASS)]
    assert picks.labelled == {"pneumonia": 20, "covid": 3}
    assert max(picks.edge)[2].uri == "edge"  # the nearest to a tie


def test_a_cancelled_job_gets_its_report_as_it_stood(tmp_path):
    from scheduler.submit import cancel

    settings = support.embedded_with_tiny_model(tmp_path)
    archive = tmp_path / "archive"
    archive.mkdir()
    for i, data in enumerate(support.sample_images(4)):
        (archive / f"film{i}.png").write_bytes(data)

    class Killed(BaseException):
        pass

    def killed_after_one_chunk(walked: int, sent: int) -> None:
        raise Killed

    with pytest.raises(Killed):  # the scheduler dies mid-walk: its job stays pending
        submit(settings, str(archive), "tiny@production", chunk_size=2, on_progress=killed_after_one_chunk)
    with session_scope(settings) as session:
        job_id = session.scalars(select(Job.id)).one()
    assert cancel(settings, job_id)
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job.status == JobStatus.CANCELLED and job.report_uri and job.csv_uri
    page = read_uri(job.report_uri, settings).decode()
    assert "Cancelled at" in page and "are final" in page
    assert read_uri(job.csv_uri, settings).decode().count("\n") == 3  # a header and the two films scored
