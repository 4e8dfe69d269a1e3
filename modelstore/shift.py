"""How unlike the training data an image is: a reference of the training distribution, shipped
with the model, and a per-image shift score computed from the features the model already has.

A hospital's archive is, by definition, data the model was not trained on; where its films
differ from the training films (another scanner, another population, not a chest film at all)
the published figures do not apply. The score says, per image, how far the model's own pooled
features lie from the training split's, and the validation split turns the raw distance into a
percentile: 99.7 means farther than 99.7 % of validation films, which the model never saw in
training but which came from the same sources.

Two measures, both on standardised features projected onto the training split's principal
components (a few dozen of them carry almost all of the variance, and a 3 840-dimensional
covariance from a few hundred films is not estimable):

- ``mahalanobis``: distance under a Ledoit-Wolf shrunk covariance of the projection;
- ``knn``: mean Euclidean distance to the k nearest training films in the projection.

The reference is plain arrays in an ``.npz`` (never pickled), listed with its sha256 in the
manifest and verified on pull like the model file. NumPy only at scoring time; scikit-learn
fits it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cxr.core.errors import ManifestError

ShiftMethod = Literal["mahalanobis", "knn"]
DEFAULT_COMPONENTS = 32
DEFAULT_NEIGHBOURS = 5
_FLOOR = 1e-6  # a feature constant on the training split is not divided by zero


@dataclass(frozen=True)
class ShiftReference:
    """The fitted reference: what ``score`` needs, as arrays."""

    method: ShiftMethod
    mean: np.ndarray  # (D,) feature means on the training split
    scale: np.ndarray  # (D,) feature standard deviations (floored)
    components: np.ndarray  # (k, D) principal axes of the standardised training features
    precision: np.ndarray  # (k, k) shrunk inverse covariance of the projection (mahalanobis)
    anchors: np.ndarray  # (n, k) projected training films (knn); empty for mahalanobis
    neighbours: int

    @property
    def dims(self) -> int:
        return int(self.mean.shape[0])

    def project(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.dims:
            raise ManifestError(
                f"the shift reference expects (N, {self.dims}) features, not {features.shape}"
            )
        return ((features - self.mean) / self.scale) @ self.components.T

    def score(self, features: np.ndarray) -> np.ndarray:
        """(N, D) pooled features → (N,) raw distances (larger: less like the training split)."""
        z = self.project(features)
        if self.method == "mahalanobis":
            return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", z, self.precision, z), 0.0))
        squared = (
            (z * z).sum(axis=1)[:, None] - 2.0 * z @ self.anchors.T + (self.anchors**2).sum(axis=1)[None, :]
        )
        distances = np.sqrt(np.maximum(squared, 0.0))
        k = min(self.neighbours, distances.shape[1])
        return np.sort(distances, axis=1)[:, :k].mean(axis=1)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer, method=np.array(self.method), mean=self.mean, scale=self.scale,
            components=self.components, precision=self.precision, anchors=self.anchors,
            neighbours=np.array(self.neighbours),
        )  # fmt: skip
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "shift reference") -> ShiftReference:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                return cls(
                    method=str(arrays["method"]),  # type: ignore[arg-type]
                    mean=arrays["mean"], scale=arrays["scale"], components=arrays["components"],
                    precision=arrays["precision"], anchors=arrays["anchors"],
                    neighbours=int(arrays["neighbours"]),
                )  # fmt: skip
        except (KeyError, ValueError, OSError) as exc:
            raise ManifestError(f"{where} is not a valid shift reference: {exc}") from exc


def fit_reference(
    features: np.ndarray,
    method: ShiftMethod = "mahalanobis",
    components: int = DEFAULT_COMPONENTS,
    neighbours: int = DEFAULT_NEIGHBOURS,
) -> ShiftReference:
    """Fit on the training split's pooled features (N, D)."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 3:
        raise ManifestError(f"a shift reference needs at least 3 training films, got {features.shape}")
    mean = features.mean(axis=0)
    scale = np.maximum(features.std(axis=0), _FLOOR)
    standard = (features - mean) / scale
    k = max(1, min(components, len(features) - 1, features.shape[1]))
    _, _, axes = np.linalg.svd(standard, full_matrices=False)
    axes = axes[:k]
    projected = standard @ axes.T
    precision = LedoitWolf().fit(projected).precision_
    anchors = projected if method == "knn" else np.zeros((0, k))
    return ShiftReference(method, mean, scale, axes, precision, anchors, neighbours)


def percentiles(scores: np.ndarray, validation_scores: np.ndarray) -> np.ndarray:
    """Each score's percentile among the validation split's scores: the share (0-100) of
    validation films that lie no farther from the training data."""
    reference = np.sort(np.asarray(validation_scores, dtype=np.float64))
    if reference.size == 0:
        raise ManifestError("a shift reference needs the validation split's scores")
    ranks = np.searchsorted(reference, np.asarray(scores, dtype=np.float64), side="right")
    return 100.0 * ranks / reference.size
