"""The per-job verdict and the report's banner, on the embedded defaults, with a model trained
here on the shipped sample (its shift reference is fitted on real radiographs)."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

from bench.shift import non_radiograph_files
from cxr.core.db.migrate import upgrade
from cxr.core.db.session import dispose_engines
from cxr.core.settings import Settings
from scheduler.report import write_report
from scheduler.submit import submit
from scheduler.summary import job_summary
from tests import worker_support as support

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Settings:
    settings = Settings(data_dir=tmp_path_factory.mktemp("shift") / "cxr-data")
    upgrade(settings=settings)
    support.train_sample_model(settings, "shifty")
    yield settings
    dispose_engines()


def test_a_folder_of_non_radiographs_gets_the_verdict_and_the_banner(trained, tmp_path):
    folder = tmp_path / "not-chest-films"
    folder.mkdir()
    for name, data in non_radiograph_files().items():
        (folder / name).write_bytes(data)
    # Uniform images (no contrast) and the CT/MR slices (DICOM policy) are skipped before the
    # model; four crops of each photograph and of the text page make enough scored films for the
    # verdict to be sure (3 of 3 flagged would not be).
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "text-page.png"):
        with Image.open(folder / name) as image:
            width, height = image.size
            for i, (left, top) in enumerate(
                [(0, 0), (width // 3, 0), (0, height // 3), (width // 3, height // 3)]
            ):
                crop = image.crop((left, top, left + 2 * width // 3, top + 2 * height // 3)).convert("RGB")
                crop.save(folder / f"crop{i}-{name.rsplit('.', 1)[0]}.png")
    job = submit(trained, str(folder), "shifty@production")
    summary = job_summary(trained, job.job_id)
    shift = summary["shift"]
    # The sample model is tiny: most, not all, crops lie beyond its threshold; the verdict is sure.
    assert shift["shifted"] and shift["scored"] == summary["scored"] == 15
    assert shift["flagged"] >= 0.75 * shift["scored"]
    assert "do not apply" in shift["message"]
    files = write_report(trained, job.job_id, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert 'id="shift-banner"' in page and page.index("shift-banner") < page.index("Counts")
    assert files["csv"]


def test_films_the_model_was_trained_on_get_no_banner(trained, tmp_path):
    folder = tmp_path / "familiar"
    folder.mkdir()
    with (support.SAMPLE / "manifest.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    for row in rows[:12]:  # training films among them: as familiar as films get
        (folder / row["path"].replace("/", "-")).write_bytes((support.SAMPLE / row["path"]).read_bytes())
    job = submit(trained, str(folder), "shifty@production")
    summary = job_summary(trained, job.job_id)
    assert summary["shift"]["scored"] == 12 and not summary["shift"]["shifted"]
    write_report(trained, job.job_id, tmp_path / "report.html")
    assert 'id="shift-banner"' not in (tmp_path / "report.html").read_text()


def test_the_report_carries_the_model_card_decisions_and_shortcut_scores(trained, tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    with (support.SAMPLE / "manifest.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    for row in rows[::8]:
        (folder / row["path"].replace("/", "-")).write_bytes((support.SAMPLE / row["path"]).read_bytes())
    job = submit(trained, str(folder), "shifty@production", explain="all")
    files = write_report(trained, job.job_id, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    # The model card: training data by class and source, test figures with their intervals.
    card = page[page.index('id="model-card"') :]
    assert "Training data" in card and "ieee8023" in card  # a source of the sample, as a table row
    assert "95% CI" in card and " – " in card
    assert "Source confound" in card and "Small test sets" in card and "Not for clinical use" in card
    assert "Lineage" in card and "training data fingerprint" in card
    assert "Decisions at the operating points" in page
    assert "Started" in page and "Duration" in page
    # Every explained film's shortcut score is in the CSV.
    from cxr.core.storage import read_uri

    table = list(csv.DictReader(read_uri(files["csv"], trained).decode().splitlines()))
    scored = [r for r in table if r["outcome"] == "scored"]
    assert scored and all(r["explained_class"] == r["label"] for r in scored)
    assert any(r["shortcut_score"] for r in scored)
    assert all(0 <= float(r["shortcut_score"]) <= 1 for r in scored if r["shortcut_score"])
