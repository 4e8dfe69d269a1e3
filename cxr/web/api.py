"""The JSON API, ``/api/v1``, for a hospital system: score one film, submit and poll jobs, list
models. Every route needs ``Authorization: Bearer <CXR_WEB_TOKEN>``; the OpenAPI schema is at
``/api/v1/openapi.json`` (behind the same token)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from cxr.core.errors import PermanentError
from cxr.web import catalog

_bearer = HTTPBearer(auto_error=False, description="The value of CXR_WEB_TOKEN.")
MODEL_REF = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(@[A-Za-z0-9_.-]{1,64})?$"
JOB_ID = r"^[0-9a-f]{1,32}$"


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """401 unless the request carries the right bearer token."""
    value = None if credentials is None else f"{credentials.scheme} {credentials.credentials}"
    if not request.app.state.auth.bearer_ok(value):
        raise HTTPException(
            status_code=401, detail="a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )


router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)])


class ErrorOut(BaseModel):
    """Why a request was refused: one sentence, or for invalid parameters FastAPI's list of
    what failed where."""

    detail: str | list[dict[str, Any]]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    meaning = {
        401: "No or wrong bearer token.",
        404: "No such model, alias or job.",
        411: "The request body has no Content-Length.",
        413: "The film is over CXR_WEB_MAX_UPLOAD_BYTES.",
        422: "Not a readable film (the reason says why: format, pixels over CXR_WEB_MAX_UPLOAD_PIXELS, "
        "a lateral view), or invalid parameters.",
    }
    return {code: {"model": ErrorOut, "description": meaning[code]} for code in codes}


class ExplanationOut(BaseModel):
    method: str
    explained_class: str
    shortcut_score: float | None
    overlay_png_base64: str | None = None


class PredictOut(BaseModel):
    """One film's call. ``label`` is null only when the model abstained (CXR_SHIFT_POLICY=abstain)."""

    model: str = Field(description="The exact version that scored the film, NAME@VERSION.")
    label: str | None
    abstained_reason: str | None
    probabilities: dict[str, float] = Field(description="Class → probability, the model's class order.")
    operating_points: dict[str, dict[str, Any]] = Field(
        description="Class → threshold chosen on validation and whether this film reaches it."
    )
    shift: dict[str, Any] | None = Field(description="Shift percentile and flag; null without a reference.")
    explanation: ExplanationOut
    image: dict[str, Any]
    intended_use: str


class JobIn(BaseModel):
    """What ``cxr score`` takes: a folder on the server, ``s3://bucket/prefix`` or a list file."""

    source: str = Field(min_length=1, max_length=4096)
    model: str | None = Field(default=None, pattern=MODEL_REF, description="NAME@REF; default CXR_WEB_MODEL.")
    explain: Literal["none", "positives", "all"] = "none"
    explain_method: Literal["gradcam", "gradcam++", "feature-maps"] = "gradcam"
    chunk_size: int | None = Field(default=None, ge=1, le=100_000)


class JobSubmittedOut(BaseModel):
    job_id: str
    model: str
    total: int
    resumed: bool
    chunks_sent: int
    status: str


class JobOut(BaseModel):
    job_id: str
    status: str
    source: str
    model: str
    total: int
    scored: int
    skipped: int
    failed: int
    done: int
    progress: float = Field(description="(scored + skipped + failed) / total, 0-1.")
    report: str | None
    created_at: str
    finished_at: str | None


class JobsOut(BaseModel):
    jobs: list[JobOut]


class JobDetailOut(JobOut):
    by_label: dict[str, int]
    failures: list[dict[str, Any]]
    failures_by_reason: dict[str, int]
    skipped_by_reason: dict[str, int]
    shift: dict[str, Any] | None
    images_per_second: float


class ModelsOut(BaseModel):
    models: list[dict[str, Any]]
    problems: list[str]


async def read_upload(file: UploadFile, limit: int) -> bytes:
    """The film's bytes, refusing (413) as soon as it passes the limit."""
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"the film is over the {limit}-byte limit (CXR_WEB_MAX_UPLOAD_BYTES)")
    if not data:
        raise HTTPException(422, "the uploaded file is empty")
    return data


@router.post(
    "/predict",
    response_model=PredictOut,
    summary="Score and explain one film",
    responses=_errors(401, 404, 411, 413, 422),
)
async def predict(
    request: Request,
    file: Annotated[UploadFile, File(description="One film: PNG, JPEG or DICOM.")],
    model: str | None = Query(
        default=None, pattern=MODEL_REF, description="NAME@REF; default CXR_WEB_MODEL."
    ),
    include_overlay: bool = Query(default=False, description="Add the Grad-CAM overlay as base64 PNG."),
) -> dict[str, Any]:
    """The film is decoded, scored and explained in memory and never stored."""
    settings = request.app.state.settings
    data = await read_upload(file, settings.web_max_upload_bytes)
    result = await run_in_threadpool(request.app.state.predictor.predict, data, model or settings.web_model)
    return result.to_json(include_overlay)


def _submit(settings: Any, job: JobIn) -> dict[str, Any]:
    """What ``cxr score`` does: submit (or resume) the job; without a broker the job runs here,
    and its CSV and report are written as ``cxr score`` writes them."""
    from scheduler.report import ensure_report
    from scheduler.submit import submit
    from scheduler.summary import get_job

    submitted = submit(
        settings,
        job.source,
        job.model or settings.web_model,
        chunk_size=job.chunk_size,
        explain=job.explain,
        explain_method=job.explain_method,
    )
    if settings.in_process:  # the job wrote its report as it finished; a cancelled one has its own
        ensure_report(settings, submitted.job_id)
    return {
        "job_id": submitted.job_id,
        "model": submitted.model.ref,
        "total": submitted.total,
        "resumed": submitted.resumed,
        "chunks_sent": submitted.chunks_sent,
        "status": get_job(settings, submitted.job_id).status.value,
    }


@router.post(
    "/jobs",
    response_model=JobSubmittedOut,
    status_code=202,
    summary="Submit a bulk scoring job",
    responses=_errors(401, 404, 411),
)
async def submit_job(request: Request, job: JobIn) -> dict[str, Any]:
    """Exactly ``cxr score SOURCE --model MODEL``: the model version is pinned now, the source is
    walked and cut into chunks for the workers. Submitting the same source and model again
    resumes the unfinished job. Without a broker the job is scored before the answer comes."""
    return await run_in_threadpool(_submit, request.app.state.settings, job)


@router.get("/jobs", response_model=JobsOut, summary="List jobs, newest first", responses=_errors(401))
async def jobs(request: Request, limit: int = Query(default=100, ge=1, le=1000)) -> dict[str, Any]:
    return {"jobs": await run_in_threadpool(catalog.list_jobs, request.app.state.settings, limit)}


def job_detail(settings: Any, job_id: str) -> dict[str, Any]:
    from scheduler.summary import get_job, job_summary

    try:
        job = get_job(settings, job_id)
    except PermanentError as exc:
        raise HTTPException(404, f"no job {job_id}") from exc
    summary = job_summary(settings, job_id)
    return catalog.job_row(job) | {
        key: summary[key]
        for key in (
            "by_label",
            "failures",
            "failures_by_reason",
            "skipped_by_reason",
            "shift",
            "images_per_second",
        )
    }


@router.get(
    "/jobs/{job_id}", response_model=JobDetailOut, summary="Poll one job", responses=_errors(401, 404)
)
async def job(request: Request, job_id: str = PathParam(pattern=JOB_ID)) -> dict[str, Any]:
    return await run_in_threadpool(job_detail, request.app.state.settings, job_id)


@router.get(
    "/models",
    response_model=ModelsOut,
    summary="Models, versions, aliases, metrics with CIs",
    responses=_errors(401),
)
async def models(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(catalog.list_models, request.app.state.settings)


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> dict[str, Any]:
    return request.app.openapi()
