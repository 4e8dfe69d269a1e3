"""Adapting a published model to a new site: refit its logistic heads on the frozen features.

Why the heads only: a site labels tens of films, not thousands. The frozen base's pooled features
are what the model already knows; the heads (one Dense layer per ensemble member) are a small
convex problem that tens of films can move, and ``linear_probe.fit_logistic_head`` solves it in
closed form. The adapted model is the same Keras graph with new Dense weights: nothing new for a
worker to load.

Two choices are made from the site's own films by **patient-grouped cross-validation** (no
patient in both the fitting and the scoring part of a fold): the inverse penalty C, and the
share of the fit's weight on the local films when they are mixed with the parent's original
training films (``mix="original"``; ``mix="local-only"`` fits on local films alone). Within each
part the classes are balanced; the original films' features are recomputed with the same
runtime from the parent's training split (``original_training_features``).

What is reported is cross-validated too, and nested: for each outer fold the choices are made
again on the other folds' films only, the heads fitted there, and the outer fold's films
scored. So every local film is scored by heads that never saw it or its patient, and the
parent is scored on the same films: the two sets of figures compare like with like. The
operating points are recalibrated on those out-of-fold probabilities. The promotion gate
measures an adapted version by these figures, never by its figures on the films it was fitted
on (``scheduler.retraining``).

Everything below ``original_training_features`` works on arrays: tests and ``bench/adapt.py``
call it on cached features.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from cxr.core.errors import ConfigurationError
from modelstore.manifest import OperatingPoint
from modelstore.outputs import OutputKind, class_probabilities
from training_jobs.evaluation import evaluate_predictions
from training_jobs.linear_probe import fit_logistic_head
from training_jobs.operating_points import DEFAULT_TARGETS, choose_operating_points

log = logging.getLogger(__name__)

Mix = Literal["original", "local-only"]
#: Inverse penalties tried when refitting: the strong end of the training grid. The local folds
#: are small, every extra candidate is one more chance to fit their noise, and each candidate costs
#: a fit per fold on the original films too. On the leave-source-out benchmark (which tried 1e-3
#: and 1e-2 only) mix=original chose 1e-3 in all 30 draws, local-only 1e-2 in 22 of 30.
ADAPT_PENALTIES: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
#: Shares of the total weight on the local films tried with ``mix="original"``.
LOCAL_SHARES: tuple[float, ...] = (0.5, 0.9)
MAX_FOLDS = 5
#: Logit given to a class the fitting films lack: the refitted head never predicts it.
ABSENT_LOGIT = -30.0


@dataclass(frozen=True)
class HeadSlice:
    """One head of the model: its Dense layer and the columns of the runtime's concatenated
    features it reads."""

    features_layer: str
    dense_layer: str
    start: int
    stop: int


@dataclass(frozen=True)
class Heads:
    """Dense weights of every head, in ``HeadSlice`` order: (kernel (D, units), bias (units,))."""

    weights: list[tuple[np.ndarray, np.ndarray]]
    penalties: list[float] = field(default_factory=list)


def model_heads(model: Any, feature_layers: Sequence[str]) -> list[HeadSlice]:
    """Each pooled feature layer and the Dense layer that reads it (through a Dropout, as built
    by ``architectures``), with its columns in the runtime's features."""
    heads, start = [], 0
    for name in feature_layers:
        width = int(model.get_layer(name).output.shape[-1])
        heads.append(HeadSlice(name, _dense_after(model, name), start, start + width))
        start += width
    return heads


def _dense_after(model: Any, layer_name: str) -> str:
    import keras

    conventional = layer_name.removesuffix("avg_pool_head") + "predictions"
    if layer_name.endswith("avg_pool_head") and conventional in {layer.name for layer in model.layers}:
        return conventional
    frontier = [model.get_layer(layer_name)]
    while frontier:
        layer = frontier.pop(0)
        for node in getattr(layer, "_outbound_nodes", []):
            follower = node.operation
            if isinstance(follower, keras.layers.Dense):
                return str(follower.name)
            if isinstance(follower, keras.layers.Dropout):
                frontier.append(follower)
    raise ConfigurationError(f"no Dense head reads {layer_name}: this model has no logistic head to refit")


def current_heads(model: Any, slices: Sequence[HeadSlice]) -> Heads:
    weights = [tuple(np.asarray(w, dtype=np.float64) for w in model.get_layer(s.dense_layer).get_weights())
               for s in slices]  # fmt: skip
    return Heads([(k, b) for k, b in weights])


def head_probabilities(
    features: np.ndarray, slices: Sequence[HeadSlice], heads: Heads, output: OutputKind
) -> np.ndarray:
    """The model's class probabilities computed from its pooled features, as its graph does:
    each member's Dense layer and activation, the members' outputs averaged."""
    outs = []
    for s, (kernel, bias) in zip(slices, heads.weights, strict=True):
        logits = np.asarray(features[:, s.start : s.stop], dtype=np.float64) @ kernel + bias
        if output == "sigmoid":
            outs.append(1.0 / (1.0 + np.exp(-logits)))
        else:
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            outs.append(shifted / shifted.sum(axis=1, keepdims=True))
    return class_probabilities(np.mean(outs, axis=0), output)


def sample_weights(y_original: np.ndarray, y_local: np.ndarray, local_share: float) -> np.ndarray:
    """Weights of (original films, then local films): classes balanced within each part, the
    local part holding ``local_share`` of the total, the mean weight 1 (so C keeps its sense)."""
    parts = []
    total = len(y_original) + len(y_local)
    for y, share in ((y_original, 1.0 - local_share), (y_local, local_share)):
        y = np.asarray(y)
        if len(y) == 0:
            continue
        present = np.unique(y)
        counts = {int(c): int((y == c).sum()) for c in present}
        parts.append(np.asarray([share * total / (len(present) * counts[int(c)]) for c in y]))
    return np.concatenate(parts)


def _expand(kernel: np.ndarray, bias: np.ndarray, present: list[int], num_classes: int, output: OutputKind):
    """A fit over the ``present`` classes → the model's Dense units (absent classes never win)."""
    d = kernel.shape[0]
    units = 1 if output == "sigmoid" else num_classes
    if len(present) == num_classes:
        return kernel, bias
    full_k, full_b = np.zeros((d, units)), np.full(units, ABSENT_LOGIT)
    if output == "sigmoid":  # one class only: a constant call for it
        full_b[0] = -ABSENT_LOGIT if present == [1] else ABSENT_LOGIT
        return full_k, full_b
    if len(present) == 1:
        full_b[present[0]] = 0.0
    elif len(present) == 2:  # a binary fit: one unit, the logit of present[1] against present[0]
        full_b[present[0]] = 0.0
        full_k[:, present[1]], full_b[present[1]] = kernel[:, 0], bias[0]
    else:
        full_k[:, present], full_b[present] = kernel, bias
    return full_k, full_b


def fit_heads(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, slices: Sequence[HeadSlice], num_classes: int,
    output: OutputKind, penalty: float,
) -> Heads:  # fmt: skip
    """One logistic head per member on its slice of the features, with a fixed penalty."""
    present = sorted(int(c) for c in np.unique(y))
    remap = {c: i for i, c in enumerate(present)}
    y_fit = np.asarray([remap[int(c)] for c in y])
    out = []
    for s in slices:
        if len(present) == 1:
            out.append(_expand(np.zeros((s.stop - s.start, 1)), np.zeros(1), present, num_classes, output))
            continue
        empty = (np.zeros((0, s.stop - s.start)), np.zeros(0, dtype=np.int64))
        fitted = fit_logistic_head((x[:, s.start : s.stop], y_fit), empty, len(present), grid=(penalty,),
                                   sample_weight=weight)  # fmt: skip
        out.append(_expand(fitted.kernel.astype(np.float64), fitted.bias.astype(np.float64), present,
                           num_classes, output))  # fmt: skip
    return Heads(out, [penalty] * len(slices))


def patient_folds(y: np.ndarray, groups: Sequence[str], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep each patient's films together: up to ``MAX_FOLDS``, as many as
    the commonest class's patients allow. Every class needs two patients, so that each fold's
    fitting part holds every class (a rare class's patients are spread over different folds)."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y)
    groups = np.asarray(groups)
    per_class = [len(set(groups[y == c])) for c in np.unique(y)]
    if not per_class or min(per_class) < 2:
        raise ConfigurationError(
            "cross-validation needs at least two labelled patients of every class present; got "
            + ", ".join(f"class {int(c)}: {k}" for c, k in zip(np.unique(y), per_class, strict=True))
        )
    n = min(MAX_FOLDS, max(per_class))
    splitter = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "the least populated class has only m members": intended
        warnings.simplefilter("ignore", category=UserWarning)
        return [(np.asarray(a), np.asarray(b)) for a, b in splitter.split(np.zeros(len(y)), y, groups)]


@dataclass(frozen=True)
class Problem:
    """What a refit needs: the local films, the original ones (empty for local-only) and the
    model's shape."""

    x_local: np.ndarray
    y_local: np.ndarray
    groups: list[str]
    x_original: np.ndarray
    y_original: np.ndarray
    slices: list[HeadSlice]
    num_classes: int
    output: OutputKind

    def subset(self, index: np.ndarray) -> Problem:
        return Problem(
            self.x_local[index],
            self.y_local[index],
            [self.groups[i] for i in index],
            self.x_original,
            self.y_original,
            self.slices,
            self.num_classes,
            self.output,
        )

    def cross_validatable(self) -> Problem:
        """Without the films of classes that fewer than two labelled patients hold: such a class
        cannot be both fitted and scored out of fold (with ``mix="original"`` the original films
        still teach it)."""
        groups = np.asarray(self.groups)
        rare = [c for c in np.unique(self.y_local) if len(set(groups[self.y_local == c])) < 2]
        if not rare:
            return self
        log.warning("classes %s have fewer than two labelled patients: left out of the local films",
                    [int(c) for c in rare])  # fmt: skip
        return self.subset(np.flatnonzero(~np.isin(self.y_local, rare)))

    def fit(self, penalty: float, local_share: float) -> Heads:
        if local_share >= 1.0 or len(self.y_original) == 0:
            x, y = self.x_local, self.y_local
            weight = sample_weights(np.zeros(0), self.y_local, 1.0)
        else:
            x = np.concatenate([self.x_original, self.x_local])
            y = np.concatenate([self.y_original, self.y_local])
            weight = sample_weights(self.y_original, self.y_local, local_share)
        return fit_heads(x, y, weight, self.slices, self.num_classes, self.output, penalty)


def _candidates(
    mix: Mix, penalties: Sequence[float], shares: Sequence[float]
) -> Iterator[tuple[float, float]]:
    for share in (1.0,) if mix == "local-only" else shares:
        for penalty in penalties:
            yield penalty, share


def _log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-15, 1.0))))


def choose(
    problem: Problem, mix: Mix, seed: int, penalties: Sequence[float] = ADAPT_PENALTIES,
    shares: Sequence[float] = LOCAL_SHARES,
) -> tuple[float, float, dict[str, float]]:  # fmt: skip
    """(C, local share) with the lowest out-of-fold log-loss over patient-grouped folds of the
    local films (pooled over folds, so a fold of two films weighs what two films weigh)."""
    problem = problem.cross_validatable()
    folds = patient_folds(problem.y_local, problem.groups, seed)
    path: dict[str, float] = {}
    best: tuple[float, float, float] | None = None
    for penalty, share in _candidates(mix, penalties, shares):
        oof = np.zeros((len(problem.y_local), problem.num_classes))
        for train, test in folds:
            heads = problem.subset(train).fit(penalty, share)
            oof[test] = head_probabilities(problem.x_local[test], problem.slices, heads, problem.output)
        loss = _log_loss(problem.y_local, oof)
        path[f"C={penalty:g},local_share={share:g}"] = loss
        if best is None or loss < best[0]:
            best = (loss, penalty, share)
    assert best is not None
    return best[1], best[2], path


@dataclass
class AdaptationResult:
    heads: Heads
    penalty: float
    local_share: float
    folds: int
    selection_path: dict[str, float]
    #: Out-of-fold (nested) probabilities of the local films: adapted, and the parent's.
    cv_probs: np.ndarray
    parent_probs: np.ndarray
    cv_metrics: dict[str, Any]
    parent_metrics: dict[str, Any]
    operating_points: dict[str, OperatingPoint]


def adapt_heads(
    problem: Problem,
    parent: Heads,
    classes: Sequence[str],
    *,
    mix: Mix,
    seed: int = 0,
    targets: Mapping[str, float] | None = None,
    n_resamples: int = 1000,
    penalties: Sequence[float] = ADAPT_PENALTIES,
    shares: Sequence[float] = LOCAL_SHARES,
) -> AdaptationResult:
    """Choose, fit and measure (nested patient-grouped CV), then refit on every local film."""
    if mix == "original" and len(problem.y_original) == 0:
        raise ConfigurationError("mix=original needs the parent's original training features")
    problem = problem.cross_validatable()
    outer = patient_folds(problem.y_local, problem.groups, seed)
    cv = np.zeros((len(problem.y_local), problem.num_classes))
    for number, (train, test) in enumerate(outer):
        inner = problem.subset(train)
        try:
            penalty, share, _ = choose(inner, mix, seed + 1 + number, penalties, shares)
        except ConfigurationError:  # too few patients left to cross-validate inside this fold
            penalty, share = (
                float(np.median(penalties)),
                1.0 if mix == "local-only" else float(np.median(shares)),
            )
        cv[test] = head_probabilities(problem.x_local[test], problem.slices, inner.fit(penalty, share),
                                      problem.output)  # fmt: skip
    penalty, share, path = choose(problem, mix, seed, penalties, shares)
    heads = problem.fit(penalty, share)
    parent_probs = head_probabilities(problem.x_local, problem.slices, parent, problem.output)
    y = problem.y_local
    figures = dict(n_resamples=n_resamples, seed=seed, present_only=True)
    wanted = dict(targets) if targets is not None else dict(DEFAULT_TARGETS)
    log.info("adaptation (%s): C=%g, local share %g chosen over %d patient-grouped folds", mix, penalty,
             share, len(outer))  # fmt: skip
    return AdaptationResult(
        heads=heads, penalty=penalty, local_share=share, folds=len(outer), selection_path=path,
        cv_probs=cv, parent_probs=parent_probs,
        cv_metrics=evaluate_predictions(y, cv, classes, **figures),
        parent_metrics=evaluate_predictions(y, parent_probs, classes, **figures),
        operating_points=choose_operating_points(y, cv, classes, wanted),
    )  # fmt: skip


def write_heads(model: Any, slices: Sequence[HeadSlice], heads: Heads) -> None:
    """Put the refitted weights into the model's Dense layers (float32, as Keras holds them)."""
    for s, (kernel, bias) in zip(slices, heads.weights, strict=True):
        dense = model.get_layer(s.dense_layer)
        old = dense.get_weights()[0]
        if old.shape != kernel.shape:
            raise ConfigurationError(f"{s.dense_layer}: kernel {old.shape}, refit gave {kernel.shape}")
        dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
