import pytest
import sqlalchemy as sa

from cxr.core.db.migrate import current_revision, head_revision, require_current, upgrade
from cxr.core.db.session import dispose_engines
from cxr.core.errors import ConfigurationError
from cxr.core.settings import Settings
from tests import services

pytestmark = pytest.mark.integration

TABLES = {
    "model_versions", "training_runs", "evaluations", "jobs", "chunks", "images",
    "predictions", "artifacts", "failures", "alembic_version",
}  # fmt: skip


def _check_fresh_database(settings: Settings) -> None:
    with pytest.raises(ConfigurationError, match="cxr db upgrade"):
        require_current(settings)
    assert upgrade(settings=settings) == head_revision()
    require_current(settings)
    engine = sa.create_engine(settings.database_url)
    try:
        inspector = sa.inspect(engine)
        assert set(inspector.get_table_names()) >= TABLES
        uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("predictions")}
        assert ("image_sha256", "model_name", "model_version", "kind") in uniques
    finally:
        engine.dispose()
    assert upgrade(settings=settings) == current_revision(settings)  # a second run is a no-op


def test_migrations_on_fresh_sqlite(tmp_path):
    _check_fresh_database(Settings(data_dir=tmp_path))


def test_migrations_on_fresh_postgresql(tmp_path):
    url = services.create_pg_database()  # its own database: the session one is migrated by others
    try:
        _check_fresh_database(Settings(data_dir=tmp_path, database_url=url))
    finally:
        dispose_engines()
        services.drop_pg_database(url)
