"""The one vocabulary for what became of an image: an outcome, and for failures the stage.

SQL rows (``job_images.outcome``, ``failures.stage``), Prometheus labels
(``cxr_images_scored_total{outcome, class, stage}``), the per-image CSV, the HTML report and the docs all
use these values, so a figure in one place can be found in every other.

- ``scored``: the model ran on the image and its prediction is stored.
- ``skipped``: deliberately not run, with a reason: this model version already scored the same
  bytes, or a policy keeps the image out (a lateral view, a CT slice: see
  ``cxr.core.imaging.dicom_policy``). Skips are not failures: they do not
  count towards the failure-ratio alert.
- ``failed``: the image could not be scored; ``FailureStage`` says where, the reason says why.
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    SCORED = "scored"
    SKIPPED = "skipped"
    FAILED = "failed"


class FailureStage(enum.StrEnum):
    """Where an image failed. Per image: fetch, decode, preprocess, infer. Per chunk (every
    image of the chunk gets the same row): model (the pinned model could not be loaded), worker
    (the chunk killed its workers or hit an unexpected error), timeout (the task's time limit),
    write (the results could not be committed after retries), walk (the scheduler could not
    list the entry)."""

    WALK = "walk"
    FETCH = "fetch"
    DECODE = "decode"
    PREPROCESS = "preprocess"
    INFER = "infer"
    MODEL = "model"
    WORKER = "worker"
    TIMEOUT = "timeout"
    WRITE = "write"


class SkipReason(enum.StrEnum):
    """Why an image was not run through the model, when no policy message says more."""

    ALREADY_SCORED = "already scored by this model version"
    DUPLICATE_IN_CHUNK = "same bytes as another image of this chunk"
    # The DICOM scoring policy (cxr.core.imaging.dicom_policy); the reason adds the value seen.
    DICOM_MODALITY = "DICOM modality not scored"
    DICOM_BODY_PART = "DICOM body part not chest"
    DICOM_VIEW = "DICOM view not frontal"
    DICOM_FOR_PROCESSING = "DICOM image for processing, not for presentation"
    DICOM_DERIVED = "DICOM image derived or secondary"
    DICOM_BURNED_IN = "DICOM image has burned-in annotation"
    DICOM_PHOTOMETRIC = "DICOM photometric interpretation not handled"
    # A film whose pixels span (almost) no range: a blank page or a failed export, not a radiograph.
    # Such an image can sit anywhere in feature space (a uniform grey is near the "average" film),
    # so the shift score cannot be trusted to flag it: it is refused before the model runs.
    NO_CONTRAST = "no contrast: a uniform image is not a radiograph"


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters: what a failure row stores for
    an exception nobody anticipated (the type says more than a bare message)."""
    text = " ".join(str(exc).split()) or "(no message)"
    line = f"{type(exc).__name__}: {text}"
    return line if len(line) <= limit else line[: limit - 1] + "…"
