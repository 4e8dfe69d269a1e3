import json

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


def test_0007_backfills_job_identities_and_manifest_digests(tmp_path):
    """Unfinished jobs from before 0007: the newest of an identity holds it, so it is still
    resumed; versions published before get the digest of the manifest SQL recorded."""
    from cxr.core.db.jobs import job_identity
    from modelstore.integrity import manifest_digest

    settings = Settings(data_dir=tmp_path)
    upgrade("0006", settings)
    manifest = {"name": "m", "version": 1, "classes": ["a", "b"], "sha256": "0" * 64, "metrics": [{"n": 1}]}
    engine = sa.create_engine(settings.database_url)
    with engine.begin() as connection:
        for job_id, created, status in (("old", "2026-01-01", "running"), ("new", "2026-01-02", "pending"),
                                        ("done", "2026-01-03", "finished")):  # fmt: skip
            connection.execute(
                sa.text(
                    "INSERT INTO jobs (id, status, source, model_name, model_version, model_sha256, options, "
                    "total, enqueued, scored, skipped, failed, created_at, updated_at) VALUES (:id, :status, "
                    "'file:///a', 'm', 1, :sha, :options, 0, 0, 0, 0, 0, :created, :created)"
                ),
                {"id": job_id, "status": status, "sha": "0" * 64, "options": '{"explain": "none"}',
                 "created": created},
            )  # fmt: skip
        connection.execute(
            sa.text(
                "INSERT INTO model_versions (name, version, sha256, uri, architecture, classes, manifest, "
                "created_at) VALUES ('m', 1, :sha, 'u', 'x', '[]', :manifest, '2026-01-01')"
            ),
            {"sha": "0" * 64, "manifest": json.dumps(manifest)},
        )
    upgrade(settings=settings)
    with engine.connect() as connection:
        identities = dict(connection.execute(sa.text("SELECT id, active_identity FROM jobs")).all())
        digest = connection.scalar(sa.text("SELECT manifest_sha256 FROM model_versions"))
    engine.dispose()
    dispose_engines()
    assert identities == {"new": job_identity("file:///a", "m", 1, "none"), "old": None, "done": None}
    assert digest == manifest_digest(manifest)
