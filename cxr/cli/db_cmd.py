"""``cxr db``: schema migrations."""

from __future__ import annotations

import click

from cxr.cli.common import emit_json, handle_errors, json_option
from cxr.core.settings import get_settings, mask_url


@click.group()
def db() -> None:
    """Database schema management (Alembic)."""


@db.command()
@click.option("--revision", default="head", show_default=True)
@json_option
@handle_errors
def upgrade(revision: str, as_json: bool) -> None:
    """Apply migrations to the configured database."""
    from cxr.core.db.migrate import upgrade as run_upgrade

    settings = get_settings()
    now = run_upgrade(revision, settings)
    url = mask_url(settings.database_url or "")
    if as_json:
        emit_json({"database": url, "revision": now})
    else:
        click.echo(f"{url} is at revision {now}")


@db.command()
@json_option
@handle_errors
def current(as_json: bool) -> None:
    """Show the database's revision and the code's head revision."""
    from cxr.core.db.migrate import current_revision, head_revision

    data = {"current": current_revision(), "head": head_revision()}
    if as_json:
        emit_json(data)
    else:
        click.echo(f"current {data['current']}  head {data['head']}")
