"""What every command shares: settings, JSON output, errors as clean messages, schema checks."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, get_args

import click

from cxr.core.errors import CxrError
from cxr.core.imaging.contract import Contrast
from cxr.core.settings import Settings, get_settings, scrub_secrets

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
contrast_option = click.option(
    "--contrast",
    type=click.Choice(get_args(Contrast)),
    default="none",
    show_default=True,
    help="Contrast step of the model's input contract, applied by training and inference alike "
    "(clahe: CLAHE, 8×8 tiles, clip limit 2).",
)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn project errors into a one-line message and exit status 1 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CxrError as exc:
            click.echo(f"error: {scrub_secrets(str(exc))}", err=True)
            sys.exit(1)

    return wrapper


def ready_settings() -> Settings:
    """Settings with a database whose schema is current.

    The embedded SQLite database is migrated automatically (a newcomer should not have to know
    about migrations); any other database must be upgraded explicitly with ``cxr db upgrade``.
    """
    from cxr.core.db.migrate import require_current, upgrade

    settings = get_settings()
    if (settings.database_url or "").startswith("sqlite"):
        upgrade(settings=settings)
    else:
        require_current(settings)
    return settings
