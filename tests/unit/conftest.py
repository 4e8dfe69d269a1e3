"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from cxr.core.db.migrate import upgrade
from cxr.core.db.session import dispose_engines
from cxr.core.settings import Settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Embedded defaults under ``tmp_path`` (SQLite, local store), migrated; small batches and
    two decode threads, so a few images already make several batches. A test module that needs
    other settings defines its own ``settings`` fixture, which takes precedence."""
    settings = Settings(data_dir=tmp_path / "cxr-data", inference_batch_size=2, decode_threads=2)
    upgrade(settings=settings)
    yield settings
    dispose_engines()
