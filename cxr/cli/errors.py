"""Operator mistakes and unreachable services as one line each, never a traceback.

Every command runs inside ``CxrGroup.invoke``, which turns the exceptions an operator can cause
(a bad ``CXR_*`` value, a database or broker that cannot be reached, a malformed URL, a data
folder that cannot be written, a full disk) into ``error: ...`` and exit status 1. ``cxr -v``
re-raises instead, for the traceback. Anything not recognised here is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import click

from cxr.core.errors import CxrError
from cxr.core.settings import mask_url, scrub_secrets


def _first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _setting_error(exc: Any) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error.get("loc", ())) or "?"
        value = error.get("input")
        shown = f"={value!r}" if isinstance(value, str | int | float) and "secret" not in field else ""
        problems.append(f"CXR_{field.upper()}{shown}: {error.get('msg', 'invalid')}")
    return "invalid setting " + "; ".join(problems)


def _database_url() -> str:
    return mask_url(os.environ.get("CXR_DATABASE_URL", "the embedded SQLite database"))


def _broker_url() -> str:
    return mask_url(os.environ.get("CXR_BROKER_URL", "(none)"))


def describe(exc: BaseException) -> str | None:
    """The one-line message for ``exc``, or None if it is not an operator-facing error."""
    import pydantic
    import sqlalchemy.exc

    if isinstance(exc, CxrError):
        return _first_line(exc)
    if isinstance(exc, pydantic.ValidationError) and exc.title == "Settings":
        return _setting_error(exc)
    if isinstance(exc, sqlalchemy.exc.ArgumentError):
        return f"CXR_DATABASE_URL is not a valid database URL ({_first_line(exc)})"
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        reason = _first_line(exc.orig)
        if any(hint in reason.lower() for hint in ("disk is full", "no space left", "disk full")):
            return f"no space left on the device of the database {_database_url()}: {reason}"
        return f"cannot reach the database {_database_url()}: {reason}"
    if _is_broker_error(exc):
        return (
            f"cannot reach the broker {_broker_url()}: {_first_line(exc)}; start it (or fix CXR_BROKER_URL) "
            "and run the same command again"
        )
    if isinstance(exc, OSError):
        return _os_error(exc)
    return None


def _is_broker_error(exc: BaseException) -> bool:
    try:
        import kombu.exceptions
        import redis.exceptions
    except ImportError:  # pragma: no cover - both are dependencies
        return False
    return isinstance(exc, kombu.exceptions.OperationalError | redis.exceptions.ConnectionError)


def _os_error(exc: OSError) -> str:
    where = exc.filename or ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        writing = f" writing {where}" if where else ""
        return f"no space left on the device{writing}: free some space and run the command again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST):
        return f"cannot write {where}: {exc.strerror} (check CXR_DATA_DIR and the paths given)"
    if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT):
        return f"a service is unreachable: {exc.strerror}"
    return f"{exc.strerror or type(exc).__name__}: {where}".rstrip(": ")


class CxrGroup(click.Group):
    """The ``cxr`` group: one-line errors for every subcommand (tracebacks with ``-v``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            message = describe(exc)
            if message is None or ctx.params.get("verbose"):
                raise
            click.echo(f"error: {scrub_secrets(message)}", err=True)
            ctx.exit(1)
