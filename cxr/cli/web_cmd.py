"""``cxr web``: the web front door and JSON API, served by uvicorn.

It needs ``CXR_WEB_TOKEN``: without one it refuses to start, except on a loopback address with
``--generate-token``, which makes a random token for this run and shows it once on the terminal
(never in a log), so authentication is never off.
"""

from __future__ import annotations

import ipaddress
import secrets

import click

from cxr.cli.common import handle_errors, ready_settings
from cxr.core.settings import get_settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.option("--host", default=None, help="Address to bind (default CXR_WEB_HOST, 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port (default CXR_WEB_PORT, 8080)."
)
@click.option(
    "--generate-token",
    is_flag=True,
    help="No CXR_WEB_TOKEN: make a random one for this run (loopback addresses only).",
)
@handle_errors
def web(host: str | None, port: int | None, generate_token: bool) -> None:
    """Serve the web pages (upload a film, jobs, models) and the JSON API (/api/v1).

    Every request needs the token CXR_WEB_TOKEN (API: Authorization: Bearer; pages: log in).
    Research use only. Not for clinical decisions.
    """
    import uvicorn

    from cxr.web.app import create_app

    settings = get_settings()
    host = host or settings.web_host
    port = port or settings.web_port
    if settings.web_token is not None and settings.web_token.get_secret_value():
        token = settings.web_token.get_secret_value()
    elif generate_token and is_loopback(host):
        token = secrets.token_urlsafe(24)
        click.echo(f"no CXR_WEB_TOKEN: this run's token is {token}", err=True)
    elif generate_token:
        raise click.UsageError(
            f"--generate-token is for loopback addresses only, not {host}: set CXR_WEB_TOKEN"
        )
    else:
        raise click.UsageError(
            "CXR_WEB_TOKEN is not set: every request must prove a token. Set it to a long random "
            "value (`export CXR_WEB_TOKEN=$(openssl rand -hex 32)`), "
            "or on 127.0.0.1 run `cxr web --generate-token` for a one-off token."
        )
    settings = ready_settings()  # the token is settled first: a refusal touches no database
    if not is_loopback(host):
        click.echo(
            f"warning: binding {host}: put a TLS proxy in front; the token travels in every request", err=True
        )
    click.echo(f"cxr web on http://{host}:{port}/  (research use only)", err=True)
    uvicorn.run(
        create_app(settings, token),
        host=host,
        port=port,
        log_level="info",
        server_header=False,
        proxy_headers=False,
    )
