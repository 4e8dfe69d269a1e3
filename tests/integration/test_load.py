"""The load benchmark at a small size: two workers, exact counts, figures reported."""

from __future__ import annotations

import pytest

from bench.load import run_load

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_300_images_on_two_workers_are_each_scored_exactly_once(cluster_settings, tmp_path):
    figures = run_load(cluster_settings, tmp_path, images=300, chunk_size=50, workers=2)
    assert figures["scored"] == figures["predictions"] == figures["job_images"] == 300
    assert figures["images_per_s"] > 0
    assert len(figures["peak_rss_mb_per_worker"]) == 2 and min(figures["peak_rss_mb_per_worker"]) > 50
