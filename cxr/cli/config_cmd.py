"""``cxr config``: the effective settings, secrets masked."""

from __future__ import annotations

import click

from cxr.cli.common import emit_json, json_option
from cxr.core.settings import Settings, get_settings


@click.command()
@json_option
def config(as_json: bool) -> None:
    """Print the effective settings (every secret masked)."""
    values = get_settings().masked()
    if as_json:
        emit_json(values)
        return
    fields = Settings.model_fields
    for name, value in values.items():
        click.echo(f"CXR_{name.upper():<24} {value}")
        if fields[name].description:
            click.echo(f"  {'':<24} {click.style(fields[name].description, dim=True)}")
