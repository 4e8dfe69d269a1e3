"""The FastAPI application: security middleware, error mapping, the pages and the API.

``create_app(settings, token)`` builds one; ``cxr web`` serves it with uvicorn. Every response
carries a Content-Security-Policy without inline scripts (``script-src 'self'``; the pages use
none at all), ``X-Frame-Options: DENY`` and ``nosniff``; a stored job report, which embeds its
own styles and images, is served with a stricter policy still (no scripts, sandboxed).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response

from cxr import __version__
from cxr.core.errors import CxrError, ModelNotFound, ObjectNotFound
from cxr.core.settings import Settings, scrub_secrets
from cxr.web.auth import Authenticator

STATIC = Path(__file__).parent / "static"
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: The report is a self-contained page (inline styles, data-URI images) written by
#: ``scheduler.report``: it gets no scripts at all and an opaque origin.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; sandbox"
#: Multipart framing around one uploaded film: headers, boundaries, the model field.
MULTIPART_OVERHEAD = 64 * 1024


class SecurityHeaders(BaseHTTPMiddleware):
    """Security headers on every response, and uploads too large refused before they are read."""

    def __init__(self, app: object, max_body: int, max_film: int) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.max_body = max_body  # the film and its multipart framing
        self.max_film = max_film

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        length = request.headers.get("content-length")
        if request.method == "POST" and not (length and length.isdigit()):
            # A body of unannounced length would be spooled whole before any limit applies.
            response: Response = PlainTextResponse("a request body needs a Content-Length", status_code=411)
        elif request.method == "POST" and int(length) > self.max_body:
            response = too_large(request, int(length), self.max_film)
        else:
            response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"  # "no-referrer" makes Chromium send Origin: null
        response.headers.setdefault("Cache-Control", "no-store")
        return response


def too_large(request: Request, size: int, limit: int) -> Response:
    message = f"the upload is {size} bytes, over the {limit}-byte limit for a film (CXR_WEB_MAX_UPLOAD_BYTES)"
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": message}, status_code=413)
    return PlainTextResponse(message, status_code=413)


def create_app(settings: Settings, token: str, warm_up: bool = True) -> FastAPI:
    """The application for these settings; ``token`` is the secret every request must prove.
    ``warm_up`` loads the default model in the background at start, so the first film does not
    wait for TensorFlow to import."""
    from cxr.web import api, pages
    from cxr.web.inference import Predictor

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            app.state.predictor.warm_up_in_background(settings.web_model)
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="cxr",
        version=__version__,
        description="Chest X-ray screening: score one film, submit and follow bulk jobs, read the "
        "model registry. Every route needs `Authorization: Bearer <CXR_WEB_TOKEN>`. Research use "
        "only; not for clinical decisions.",
        docs_url=None,  # Swagger UI needs inline scripts and a CDN: the schema is served instead
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.auth = Authenticator(token, settings.web_session_hours * 3600)
    app.state.predictor = Predictor(settings)
    app.add_middleware(
        SecurityHeaders,
        max_body=settings.web_max_upload_bytes + MULTIPART_OVERHEAD,
        max_film=settings.web_max_upload_bytes,
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)

    @app.exception_handler(pages.LoginRequired)
    async def login_required(request: Request, exc: pages.LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(str(exc), safe='/')}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api/") or request.url.path.startswith("/static/"):
            return await http_exception_handler(request, exc)
        return pages.error_page(request, exc.status_code, str(exc.detail))

    @app.exception_handler(CxrError)
    async def cxr_error(request: Request, exc: CxrError) -> Response:
        status = 404 if isinstance(exc, ModelNotFound | ObjectNotFound) else 422
        message = scrub_secrets(str(exc))
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": message}, status_code=status)
        return pages.error_page(request, status, message)

    return app
