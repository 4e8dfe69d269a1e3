"""The pages a person uses: log in, upload a film, follow jobs, read models.

Templates are Jinja2 with autoescape on, so every string that came from an archive (file names,
URIs, failure reasons, DICOM values) is escaped wherever it is shown. No page has a script:
live progress is a ``<meta http-equiv="refresh">`` while a job is unfinished.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jinja2
from fastapi import APIRouter, Form, HTTPException, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cxr import INTENDED_USE
from cxr.core.errors import ImageError, ModelStoreError, PermanentError
from cxr.web import catalog
from cxr.web.api import JOB_ID, MODEL_REF, job_detail
from cxr.web.app import REPORT_CSP
from cxr.web.auth import SESSION_COOKIE, Session, same_origin

router = APIRouter(include_in_schema=False)

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # every value is HTML-escaped unless a template says otherwise (none does)
    undefined=jinja2.StrictUndefined,
)
_ENV.filters["pct"] = lambda value: "" if value is None else f"{100 * float(value):.1f} %"
_ENV.filters["shown"] = lambda uri: display_uri(str(uri))
_ENV.filters["fixed"] = lambda value, digits=3: "" if value is None else f"{float(value):.{digits}f}"


def display_uri(uri: str) -> str:
    """A file URI as a person reads it: the path with its percent-escapes decoded (a file named
    ``a b.png`` reads as such, not ``a%20b.png``). Still escaped by the template like any text."""
    return unquote(uri.removeprefix("file://")) if uri.startswith("file://") else uri


class LoginRequired(Exception):
    """Raised by a page that needs a session; answered with a redirect to the login form."""


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    session = current_session(request)
    auth = request.app.state.auth
    page = _ENV.get_template(template).render(
        intended_use=INTENDED_USE,
        csrf=auth.csrf_token(session) if session else "",
        logged_in=session is not None,
        refresh=context.pop("refresh", None),
        **context,
    )
    return HTMLResponse(page, status_code=status)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "error.html", status=status, status_code=status, message=message)


def current_session(request: Request) -> Session | None:
    return request.app.state.auth.session(request.cookies.get(SESSION_COOKIE))


def need_session(request: Request) -> Session:
    session = current_session(request)
    if session is None:
        raise LoginRequired(request.url.path)
    return session


def check_form(request: Request, session: Session | None, csrf: str | None) -> None:
    """A state-changing form: same origin, and (once logged in) the session's CSRF token."""
    if not same_origin(request.headers.get("origin"), request.headers.get("host"), request.url.scheme):
        raise HTTPException(403, "cross-site form submission refused")
    if session is not None and not request.app.state.auth.csrf_ok(session, csrf):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page")


def safe_next(target: str | None) -> str:
    """Only a path on this site: never ``//host`` or a full URL (an open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


# ---- login ------------------------------------------------------------------------------------
@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/login")
async def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "login.html", next=safe_next(next), error=None)


@router.post("/login")
async def login(request: Request, token: str = Form(""), next: str = Form("/")) -> Response:
    check_form(request, None, None)
    auth = request.app.state.auth
    if not auth.token_ok(token):
        await asyncio.sleep(0.5)  # slows guessing; the token itself should be long and random
        return render(request, "login.html", status=401, next=safe_next(next), error="Wrong token.")
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        auth.new_session(),
        max_age=auth.session_seconds,
        httponly=True,
        samesite="strict",
        secure=request.app.state.settings.web_cookie_secure or request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
async def logout(request: Request, csrf: str = Form("")) -> Response:
    check_form(request, need_session(request), csrf)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# ---- one film ---------------------------------------------------------------------------------
@router.get("/")
async def upload_form(request: Request) -> HTMLResponse:
    need_session(request)
    settings = request.app.state.settings
    refs = await run_in_threadpool(catalog.model_refs, settings)
    return render(
        request,
        "upload.html",
        refs=refs,
        chosen=settings.web_model,
        result=None,
        filename=None,
        limits=_limits(settings),
        error=None,
    )


def _limits(settings: Any) -> dict[str, int]:
    return {"bytes": settings.web_max_upload_bytes, "pixels": settings.web_max_upload_pixels}


@router.post("/predict")
async def predict(
    request: Request, file: UploadFile, model: str = Form(""), csrf: str = Form("")
) -> Response:
    from cxr.web.api import read_upload

    session = need_session(request)
    check_form(request, session, csrf)
    settings = request.app.state.settings
    refs = await run_in_threadpool(catalog.model_refs, settings)
    chosen = model or settings.web_model
    context = {"refs": refs, "chosen": chosen, "filename": file.filename, "limits": _limits(settings)}
    if not re.fullmatch(MODEL_REF, chosen):
        return render(
            request, "upload.html", status=422, result=None, error="Not a model reference.", **context
        )
    try:
        data = await read_upload(file, settings.web_max_upload_bytes)
        result = await run_in_threadpool(request.app.state.predictor.predict, data, chosen)
    except HTTPException as exc:
        return render(
            request, "upload.html", status=exc.status_code, result=None, error=exc.detail, **context
        )
    except ModelStoreError as exc:
        return render(request, "upload.html", status=404, result=None, error=str(exc), **context)
    except ImageError as exc:
        return render(
            request,
            "upload.html",
            status=422,
            result=None,
            error=f"This file cannot be read as a film: {exc}",
            **context,
        )
    return render(request, "upload.html", result=result, error=None, **context)


# ---- jobs -------------------------------------------------------------------------------------
@router.get("/jobs")
async def jobs(request: Request) -> HTMLResponse:
    need_session(request)
    rows = await run_in_threadpool(catalog.list_jobs, request.app.state.settings)
    live = any(row["status"] in ("pending", "running") for row in rows)
    return render(request, "jobs.html", jobs=rows, refresh=5 if live else None)


@router.get("/jobs/{job_id}")
async def job(request: Request, job_id: str = PathParam(pattern=JOB_ID)) -> HTMLResponse:
    need_session(request)
    detail = await run_in_threadpool(job_detail, request.app.state.settings, job_id)
    live = detail["status"] in ("pending", "running")
    return render(request, "job.html", job=detail, refresh=5 if live else None)


def _report(settings: Any, job_id: str) -> bytes:
    """The stored report when the job has one, else rendered now from SQL (the same function
    that writes it), so an unfinished or report-less job still has a page."""
    from cxr.core.storage import read_uri
    from scheduler.report import render_html
    from scheduler.summary import get_job

    job = get_job(settings, job_id)
    if job.report_uri:
        try:
            return read_uri(job.report_uri, settings)
        except PermanentError:
            pass  # deleted from storage: render it again
    return render_html(settings, job_id).encode("utf-8")


def _csv(settings: Any, job_id: str) -> bytes:
    from modelstore import open_model_store
    from scheduler.report import write_csv
    from scheduler.summary import get_job

    job = get_job(settings, job_id)
    manifest = open_model_store(settings, catalogue=False).manifest(job.model_name, job.model_version)
    return write_csv(settings, job_id, manifest)


def _known_job(settings: Any, job_id: str) -> None:
    from scheduler.summary import get_job

    try:
        get_job(settings, job_id)
    except PermanentError as exc:
        raise HTTPException(404, f"no job {job_id}") from exc


@router.get("/jobs/{job_id}/report")
async def report(request: Request, job_id: str = PathParam(pattern=JOB_ID)) -> Response:
    need_session(request)
    settings = request.app.state.settings
    await run_in_threadpool(_known_job, settings, job_id)
    page = await run_in_threadpool(_report, settings, job_id)
    return Response(
        page, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": REPORT_CSP}
    )


@router.get("/jobs/{job_id}/results.csv")
async def results_csv(request: Request, job_id: str = PathParam(pattern=JOB_ID)) -> Response:
    need_session(request)
    settings = request.app.state.settings
    await run_in_threadpool(_known_job, settings, job_id)
    data = await run_in_threadpool(_csv, settings, job_id)
    return Response(
        data,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="cxr-job-{job_id}.csv"'},
    )


# ---- models -----------------------------------------------------------------------------------
@router.get("/models")
async def models(request: Request) -> HTMLResponse:
    need_session(request)
    data = await run_in_threadpool(catalog.list_models, request.app.state.settings)
    return render(request, "models.html", **data)
