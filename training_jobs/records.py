"""SQL rows of training: a ``TrainingRun`` per job, an ``Evaluation`` per measured model.

The run row is written when the job starts (status ``running``) and updated as it goes, so a job
that dies leaves a ``failed`` row with the reason rather than nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from cxr.core.db.models import Evaluation, TrainingRun, new_id
from cxr.core.db.session import session_scope
from cxr.core.settings import Settings


def start_run(settings: Settings, *, name: str, architecture: str, params: dict[str, Any]) -> str:
    run_id = new_id()
    with session_scope(settings) as session:
        session.add(
            TrainingRun(id=run_id, name=name, architecture=architecture, status="running", params=params)
        )
    return run_id


def update_run(settings: Settings, run_id: str, **fields: Any) -> None:
    """Set columns of a run; ``status`` finished/failed also stamps ``finished_at``."""
    with session_scope(settings) as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise LookupError(f"no training run {run_id}")
        for key, value in fields.items():
            setattr(run, key, value)
        if fields.get("status") in ("finished", "failed"):
            run.finished_at = dt.datetime.now(dt.UTC)


def record_evaluation(
    settings: Settings,
    *,
    model_name: str,
    model_version: int | None,
    dataset: str,
    data_fingerprint: str | None,
    n_images: int,
    metrics: dict[str, Any],
    report_uri: str | None,
    training_run_id: str | None = None,
) -> int:
    with session_scope(settings) as session:
        row = Evaluation(
            model_name=model_name,
            model_version=model_version,  # None: not published; the file stays with the report
            dataset=dataset,
            data_fingerprint=data_fingerprint,
            n_images=n_images,
            metrics=metrics,
            report_uri=report_uri,
            training_run_id=training_run_id,
        )
        session.add(row)
        session.flush()
        return int(row.id)
