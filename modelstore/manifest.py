"""The model manifest: validated data (a schema), never code.

Modelled on MONAI's bundle metadata: it states the input contract, the classes in output order,
the layer explanations use, what the metrics were measured on, lineage (parent version, training
data fingerprint) and the file's sha256, so a worker can check and feed a model it has never seen.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from cxr import INTENDED_USE
from cxr.core.errors import ManifestError
from cxr.core.imaging.contract import InputContract

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
RESERVED_ALIASES = frozenset({"latest"})
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def validate_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise ManifestError(
            f"invalid model name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_alias(alias: str) -> str:
    if not ALIAS_PATTERN.match(alias or "") or alias in RESERVED_ALIASES:
        raise ManifestError(
            f"invalid alias {alias!r}: use 1-32 lowercase letters, digits, '_' or '-', starting "
            f"with a letter; {', '.join(sorted(RESERVED_ALIASES))} is reserved"
        )
    return alias


class MetricRecord(BaseModel):
    """Figures measured on one dataset; always with the data they were measured on and N."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="What the figures were measured on, e.g. 'cxr-dev test split'.")
    n: int = Field(ge=0, description="Number of images behind the figures.")
    values: dict[str, Any] = Field(description="Metric name → value (floats, or nested per class).")
    measured_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))


class ShiftSpec(BaseModel):
    """The training-distribution reference shipped beside the model file (``modelstore.shift``)."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(default="shift_reference.npz", pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}\.npz$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    method: Literal["mahalanobis", "knn"]
    feature_layers: list[str] = Field(
        min_length=1, description="Layers whose (pooled, 2-D) outputs, concatenated, are the features."
    )
    validation_scores: list[float] = Field(
        min_length=1, description="The validation split's raw scores: a raw score's percentile among them."
    )
    threshold_percentile: float = Field(
        default=99.0, gt=0, le=100, description="Images beyond it are flagged out of distribution."
    )
    n_train: int = Field(ge=0)

    @property
    def expected_flag_rate(self) -> float:
        """The share of films like the validation split that a threshold flags: at least one
        validation film's worth, since a percentile over n films moves in steps of 1/n."""
        return max(1.0 - self.threshold_percentile / 100.0, 1.0 / (len(self.validation_scores) + 1))


class OperatingPoint(BaseModel):
    """A class's decision threshold, chosen on the validation split for a target sensitivity."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(ge=0, le=1)
    target_sensitivity: float = Field(gt=0, le=1)
    validation_sensitivity: float | None = None
    validation_specificity: float | None = None
    n_positive: int = Field(ge=0)
    n_negative: int = Field(ge=0)


class SegmentationSpec(BaseModel):
    """A segmenter's manifest part: its output is a per-pixel probability of ``classes[1]``
    (the lung), at the input contract's size; a pixel is in the mask at ``threshold`` or above."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(default=0.5, gt=0, lt=1)
    dice: float | None = Field(default=None, description="Mean Dice on the held-out test masks.")


class Adaptation(BaseModel):
    """How a version was adapted to a site (``cxr adapt``): its heads refitted on the parent's
    frozen features of the site's labelled films. The gate reads ``local_data_fingerprint``: on
    those films only cross-validated figures count."""

    model_config = ConfigDict(extra="forbid")

    parent: str = Field(description="NAME@VERSION the heads were refitted from.")
    parent_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    local_data: str
    local_data_fingerprint: str
    n_local: int = Field(ge=1)
    mix: Literal["original", "local-only"]
    local_share: float = Field(gt=0, le=1, description="Share of the fit's total weight on local films.")
    penalties: dict[str, float] = Field(description="Dense layer → the chosen inverse penalty C.")
    folds: int = Field(ge=2, description="Patient-grouped folds of the local films.")
    shift_reference: Literal["parent"] = "parent"


class Manifest(BaseModel):
    """Everything needed to check, feed and understand one model version."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: Literal[1] = 1
    name: str
    version: int = Field(ge=1)
    created_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    architecture: str
    classes: list[str] = Field(min_length=2, description="Class names in the model's output order.")
    input: InputContract
    output: Literal["softmax", "sigmoid"] = Field(
        description="softmax: one probability per class; sigmoid: one unit for classes[1] "
        "(two-class models), P(classes[0]) = 1 - output."
    )
    gradcam_layer: str | None = Field(default=None, description="Conv layer Grad-CAM reads.")
    metrics: list[MetricRecord] = Field(default_factory=list)
    training_data_fingerprint: str | None = None
    parent_version: int | None = None
    library_versions: dict[str, str] = Field(default_factory=dict)
    file: str = "model.keras"
    sha256: str
    size_bytes: int = Field(ge=0)
    shift: ShiftSpec | None = Field(
        default=None, description="Training-distribution reference for the per-image shift score."
    )
    operating_points: dict[str, OperatingPoint] = Field(
        default_factory=dict, description="Class name → threshold for a target sensitivity."
    )
    segmentation: SegmentationSpec | None = Field(
        default=None, description="Set for a segmenter (a per-pixel map, not class probabilities)."
    )
    adaptation: Adaptation | None = Field(default=None, description="Set on versions made by cxr adapt.")
    intended_use: str = INTENDED_USE
    description: str = ""

    @model_serializer(mode="wrap")
    def _omit_absent_segmentation(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A classifier's manifest serialises as before segmenters existed (readers that predate
        the field forbid unknown keys)."""
        data = handler(self)
        if self.segmentation is None:
            data.pop("segmentation", None)
        return data

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_fields(cls, data: Any) -> Any:
        """``changelog`` was never written; manifests published with an empty one still load."""
        if isinstance(data, dict) and "changelog" in data:
            data = {key: value for key, value in data.items() if key != "changelog"}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        if not SHA256_PATTERN.match(value):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {value!r}")
        return value

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"class names must be unique, got {value}")
        return value

    @model_validator(mode="after")
    def _operating_points_name_classes(self) -> Manifest:
        unknown = sorted(set(self.operating_points) - set(self.classes))
        if unknown:
            raise ValueError(f"operating points for unknown classes {unknown}")
        return self

    @model_validator(mode="after")
    def _output_matches_classes(self) -> Manifest:
        if self.output == "sigmoid" and len(self.classes) != 2:
            raise ValueError("a sigmoid output needs exactly two classes")
        return self

    @property
    def fitted_fingerprints(self) -> set[str]:
        """Fingerprints of the datasets whose films this version's weights were fitted on: on
        those, only cross-validated figures measure it."""
        found = {self.training_data_fingerprint} if self.training_data_fingerprint else set()
        return found | ({self.adaptation.local_data_fingerprint} if self.adaptation else set())

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "manifest") -> Manifest:
        try:
            return cls.model_validate_json(text)
        except ValueError as exc:
            raise ManifestError(f"{where} is not a valid manifest: {exc}") from exc
