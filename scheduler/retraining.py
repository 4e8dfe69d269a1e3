"""Scheduled retraining and the promotion gate.

A new model takes over an alias (``production``) only if it is not worse than the model that
holds it, measured on the *same* fixed evaluation set: ``candidate >= incumbent - margin`` on
one configured headline metric. Both figures and the decision are stored
(``promotion_decisions``) and shown by ``cxr models show``. An undefined figure (e.g. an AUC on
a set with one class) never promotes: "not worse" must be shown, not assumed. A version is never
measured on the films it was fitted on: there its cross-validated figures stand in (``_measure``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select

from cxr.core.db.models import PromotionDecision
from cxr.core.db.session import session_scope
from cxr.core.errors import ConfigurationError, ModelNotFound
from cxr.core.settings import Settings
from modelstore import open_model_store

if TYPE_CHECKING:
    from training_jobs.train import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateResult:
    model_name: str
    alias: str
    candidate_version: int
    incumbent_version: int | None
    metric: str
    candidate_value: float | None
    incumbent_value: float | None
    margin: float
    promoted: bool
    reason: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _measure(
    settings: Settings, name: str, version: int, eval_data: str, metric: str
) -> tuple[float | None, str, str]:
    """The metric of ``name@version`` on ``eval_data``, evaluated now with the same code for both
    models (the evaluation is also recorded and appended to the model's manifest), and how it was
    measured.

    On films the version's weights were fitted on (``Manifest.fitted_fingerprints``: a site's
    films for a version made by ``cxr adapt``) a figure measured now would reward memorising
    them, so the version's cross-validated record on exactly those films is used instead; without
    one the figure is undefined, and an undefined figure never promotes.
    """
    from training_jobs.model_eval import evaluate_model

    result = evaluate_model(f"{name}@{version}", eval_data, settings)
    manifest = open_model_store(settings, catalogue=False).manifest(name, version)
    if result.data_fingerprint not in manifest.fitted_fingerprints:
        return _number(result.metrics.get(metric)), result.data_fingerprint, "measured"
    for record in manifest.metrics:
        values = record.values
        if (values.get("cross_validated") and values.get("role") == "adapted"
                and values.get("data_fingerprint") == result.data_fingerprint):  # fmt: skip
            return _number(values.get(metric)), result.data_fingerprint, "cross-validated"
    log.warning("%s@%d was fitted on %s and has no cross-validated figures there", name, version, eval_data)
    return None, result.data_fingerprint, "fitted on these films, no cross-validated figure"


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def promotion_gate(
    settings: Settings,
    name: str,
    candidate_version: int,
    *,
    eval_data: str,
    alias: str | None = None,
    metric: str | None = None,
    margin: float | None = None,
    training_run_id: str | None = None,
) -> GateResult:
    """Compare the candidate with the alias holder on ``eval_data``; move the alias if not worse."""
    alias = alias or settings.promotion_alias
    metric = metric or settings.promotion_metric
    margin = settings.promotion_margin if margin is None else margin
    store = open_model_store(settings)
    try:
        incumbent: int | None = store.resolve(f"{name}@{alias}").version
    except ModelNotFound:
        incumbent = None

    candidate_value, fingerprint, how = _measure(settings, name, candidate_version, eval_data, metric)
    incumbent_value, incumbent_how = None, "measured"
    if incumbent is not None and incumbent != candidate_version:
        incumbent_value, _, incumbent_how = _measure(settings, name, incumbent, eval_data, metric)

    if candidate_value is None:
        promoted, reason = False, f"{metric} of the candidate is undefined on this evaluation set ({how})"
    elif incumbent is None:
        promoted, reason = True, f"no model holds {alias!r} yet"
    elif incumbent == candidate_version:
        promoted, reason = False, f"version {incumbent} already holds {alias!r}"
    elif incumbent_value is None:  # "not worse" cannot be shown against an undefined figure
        promoted, reason = False, f"{metric} of the current model is undefined on this evaluation set"
    elif candidate_value >= incumbent_value - margin:
        promoted = True
        reason = f"{metric} {candidate_value:.4f} >= {incumbent_value:.4f} - margin {margin}"
    else:
        promoted = False
        reason = f"{metric} {candidate_value:.4f} < {incumbent_value:.4f} - margin {margin}"

    if "cross-validated" in (how, incumbent_how):
        reason += f" (candidate {how}, current {incumbent_how})"
    if promoted:
        store.set_alias(name, alias, candidate_version)
    result = GateResult(
        name,
        alias,
        candidate_version,
        incumbent,
        metric,
        candidate_value,
        incumbent_value,
        margin,
        promoted,
        reason,
    )
    with session_scope(settings) as session:
        session.add(
            PromotionDecision(
                model_name=name, alias=alias, candidate_version=candidate_version,
                incumbent_version=incumbent, metric=metric, candidate_value=candidate_value,
                incumbent_value=incumbent_value, margin=margin, promoted=promoted, reason=reason,
                eval_dataset=eval_data, eval_fingerprint=fingerprint, training_run_id=training_run_id,
            )
        )  # fmt: skip
    log.info("promotion gate %s@%s, candidate %d: %s (%s)", name, alias, candidate_version,
             "promoted" if promoted else "kept", reason)  # fmt: skip
    return result


def retrain_config(settings: Settings, data: str, parent: int | None) -> TrainConfig:
    """What a scheduled run trains: the ``CXR_RETRAIN_*`` settings, then the recipe if one is
    named (an unknown name is a configuration error, found before anything trains)."""
    from training_jobs.recipes import apply_recipe
    from training_jobs.train import TrainConfig

    config = TrainConfig(
        data=data,
        arch=settings.retrain_arch,
        classes=tuple(c.strip() for c in settings.retrain_classes.split(",") if c.strip()),
        name=settings.retrain_model_name,
        image_size=settings.retrain_image_size,
        epochs=settings.retrain_epochs,
        weights=settings.retrain_weights,
        publish=True,
        parent_version=parent,
        verbose=2,
    )
    if not settings.retrain_recipe:
        return config
    keep = {"weights"} if settings.retrain_weights != "none" else set()
    try:
        return apply_recipe(config, settings.retrain_recipe, keep=keep)
    except KeyError as exc:
        raise ConfigurationError(f"CXR_RETRAIN_RECIPE: {exc.args[0]}") from exc


def retrain(settings: Settings) -> GateResult:
    """The scheduled job: train on the configured data (plus ``CXR_RETRAIN_EXTRA_DATA``),
    publish, then run the gate."""
    from scheduler.retrain_data import combined_manifest, extra_sources
    from training_jobs.train import train

    if not settings.retrain_data or not settings.retrain_eval_data:
        raise ConfigurationError("scheduled retraining needs CXR_RETRAIN_DATA and CXR_RETRAIN_EVAL_DATA")
    store = open_model_store(settings)
    try:
        parent: int | None = store.resolve(
            f"{settings.retrain_model_name}@{settings.promotion_alias}"
        ).version
    except ModelNotFound:
        parent = None
    data = settings.retrain_data
    if extra_sources(settings):
        data = combined_manifest(settings, data, extra_sources(settings))
    config = retrain_config(settings, data, parent)
    result = train(config, settings)
    assert result.model_ref is not None  # publish=True
    version = int(result.model_ref.rsplit("@", 1)[1])
    log.info("retrained %s (parent %s); running the promotion gate", result.model_ref, parent)
    return promotion_gate(
        settings, settings.retrain_model_name, version, eval_data=settings.retrain_eval_data,
        training_run_id=result.run_id,
    )  # fmt: skip


def decisions(settings: Settings, name: str, limit: int = 10) -> list[dict]:
    """The most recent gate decisions for a model, newest first."""
    with session_scope(settings) as session:
        rows = session.scalars(
            select(PromotionDecision)
            .where(PromotionDecision.model_name == name)
            .order_by(PromotionDecision.id.desc())
            .limit(limit)
        ).all()
        return [
            {
                "alias": r.alias, "candidate_version": r.candidate_version,
                "incumbent_version": r.incumbent_version, "metric": r.metric,
                "candidate_value": r.candidate_value, "incumbent_value": r.incumbent_value,
                "margin": r.margin, "promoted": r.promoted, "reason": r.reason,
                "eval_dataset": r.eval_dataset, "created_at": r.created_at.isoformat(),
            }
            for r in rows
        ]  # fmt: skip
