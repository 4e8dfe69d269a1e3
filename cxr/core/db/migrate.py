"""Schema migrations through Alembic, driven from code (``cxr db upgrade``).

The migration scripts ship inside the package, so an installed ``cxr`` can upgrade a database
without a checkout. The application never calls ``create_all``: the schema is whatever the
migrations say, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from cxr.core.db.session import get_engine
from cxr.core.errors import ConfigurationError
from cxr.core.settings import Settings, get_settings

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(settings: Settings | None = None) -> Config:
    settings = settings or get_settings()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # '%' is Alembic's interpolation character; a password may contain it.
    config.set_main_option("sqlalchemy.url", (settings.database_url or "").replace("%", "%%"))
    config.attributes["settings"] = settings
    return config


def upgrade(revision: str = "head", settings: Settings | None = None) -> str | None:
    """Apply migrations up to ``revision``; returns the revision the database is now at."""
    settings = settings or get_settings()
    command.upgrade(alembic_config(settings), revision)
    return current_revision(settings)


def current_revision(settings: Settings | None = None) -> str | None:
    with get_engine(settings).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def require_current(settings: Settings | None = None) -> None:
    """Refuse to run against a database whose schema is not at the head revision."""
    current, head = current_revision(settings), head_revision()
    if current != head:
        raise ConfigurationError(
            f"database schema is at {current or 'nothing'}, the code expects {head}: run `cxr db upgrade`"
        )
