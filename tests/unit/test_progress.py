"""Long work reports its progress to whatever display a command installs: dataset loading and
the runtime's batched passes, each as one step advanced to its total."""

from __future__ import annotations

from cxr.core import progress
from modelstore import open_model_store
from modelstore.runtime import ModelRuntime
from tests import worker_support as support
from training_jobs.datasets import load_dataset


class Recorder:
    """A display that keeps what it was shown: (description, total, advanced, stopped)."""

    def __init__(self) -> None:
        self.steps: list[list] = []

    def start(self, description: str, total: int | None, unit: str) -> int:
        self.steps.append([description, total, 0, False])
        return len(self.steps) - 1

    def advance(self, bar: int, amount: int) -> None:
        self.steps[bar][2] += amount

    def stop(self, bar: int) -> None:
        self.steps[bar][3] = True


def test_batches_cover_every_item_once_and_nothing_shows_without_a_display():
    assert list(progress.batches(10, 4, "x")) == [0, 4, 8]  # no display: a plain range
    shown = Recorder()
    with progress.showing(shown):
        assert list(progress.batches(10, 4, "scoring")) == [0, 4, 8]
        assert list(progress.track("abc", 3, "letters", unit="letter")) == ["a", "b", "c"]
    assert shown.steps == [["scoring", 10, 10, True], ["letters", 3, 3, True]]


def test_loading_a_dataset_and_scoring_it_report_their_progress(tmp_path):
    settings = support.embedded_with_tiny_model(tmp_path)
    runtime = ModelRuntime.load(open_model_store(settings), "tiny@production")
    shown = Recorder()
    with progress.showing(shown):
        data = load_dataset(str(support.SAMPLE / "manifest.csv"), support.CLASSES, support.CONTRACT, settings)
        runtime.score_gray(data.images, batch_size=8)
    n = len(data.images)
    assert shown.steps[0] == ["loading films", 41, 41, True]
    assert shown.steps[1] == ["scoring", n, n, True]
