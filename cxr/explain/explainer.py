"""Decoded radiographs → one ``ImageExplanation`` each: prediction, heatmap, regions, shortcut
score. The glue the worker, training evaluation and the CLI share, so they explain alike.

Images are preprocessed by the model runtime (THE preprocessing function, the model's own input
contract), and probabilities and labels come from the runtime's one conversion and tie rule, so
an explanation states the same call as the stored prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr.explain.geometry import Placement, placement, to_original
from cxr.explain.methods import ExplanationMethod, make_method
from cxr.explain.regions import DEFAULT_MAX_REGIONS, DEFAULT_THRESHOLD, Region, regions_of_interest
from cxr.explain.scores import ClassScore
from cxr.explain.shortcut import CENTRAL_MARGIN, outside_lungs_share, shortcut_score
from modelstore.outputs import class_probabilities

if TYPE_CHECKING:
    from modelstore.runtime import ModelRuntime


@dataclass(frozen=True)
class ImageExplanation:
    """Everything learnt about one image; ``summary()`` is its JSON form."""

    method: str
    layer: str
    label: str
    explained_class: str
    probabilities: dict[str, float]
    heatmap: np.ndarray  # (h, w) in [0, 1] at the layer's resolution
    placement: Placement
    rois: list[Region]
    shortcut_score: float | None  # None: an all-zero map has no location
    channels: np.ndarray | None = None  # (k, h, w), feature maps only
    channel_indices: np.ndarray | None = None
    #: Film pixels per decoded pixel (``DecodedImage.scale``): the placement, the boxes and the
    #: overlay are on the decoded pixels; times this they are on the film in the archive.
    decode_scale: float = 1.0

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "layer": self.layer,
            "label": self.label,
            "explained_class": self.explained_class,
            "probabilities": self.probabilities,
            "rois": [region.to_dict() for region in self.rois],
            "shortcut_score": None if self.shortcut_score is None else round(self.shortcut_score, 6),
            "image_size": [self.placement.original_width, self.placement.original_height],
            "decode_scale": round(self.decode_scale, 6),
            "heatmap_size": [int(self.heatmap.shape[1]), int(self.heatmap.shape[0])],
        }


class Explainer:
    """One model runtime and one explanation method: a method name (what ``runtime.explainer``
    builds, with the manifest's Grad-CAM layer), or a method already built on the runtime's model
    (another layer, batch size or channel count)."""

    def __init__(
        self,
        runtime: ModelRuntime,
        method: str | ExplanationMethod,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        max_regions: int = DEFAULT_MAX_REGIONS,
        margin: float = CENTRAL_MARGIN,
    ) -> None:
        self.runtime = runtime
        if isinstance(method, str):
            method = make_method(
                method, runtime.model, output=runtime.output, default_layer=runtime.gradcam_layer
            )
        elif method.model is not runtime.model:
            raise ValueError(f"the {method.name} method was built on another model than {runtime.ref}")
        self.method = method
        self.classes = runtime.classes
        self.contract = runtime.contract
        self.threshold = threshold
        self.max_regions = max_regions
        self.margin = margin

    def class_index(self, class_name: str | None) -> int | None:
        """The output index of ``class_name`` (None: each image's predicted class)."""
        if class_name is None:
            return None
        if class_name not in self.classes:
            raise ValueError(f"unknown class {class_name!r}; the model's classes are {self.classes}")
        return self.classes.index(class_name)

    def explain(
        self,
        images: Sequence[np.ndarray],
        *,
        class_name: str | None = None,
        layer: str | None = None,
        scales: Sequence[float] | None = None,
    ) -> list[ImageExplanation]:
        """Explain float32 (H, W) [0, 1] images as decoded; ``scales`` are their decode scales
        (``DecodedImage.scale``; 1 when not given), recorded so results map back to the film."""
        prepared = [self.runtime.preprocess_region(pixels) for pixels in images]
        batch = np.stack([tensor for tensor, _ in prepared])
        result = self.method(ClassScore(self.class_index(class_name)), batch, layer)
        probabilities = class_probabilities(np.asarray(result.probabilities, np.float64), self.runtime.output)
        predicted = self.runtime.label_indices(probabilities)
        explained = []
        for i, pixels in enumerate(images):
            region = prepared[i][1]
            where = placement(self.contract, *pixels.shape, crop=region.box if region else None)
            heatmap = result.maps[i]
            explained.append(
                ImageExplanation(
                    method=result.method,
                    layer=result.layer,
                    label=self.classes[int(predicted[i])],
                    explained_class=self.classes[int(result.targets[i])],
                    probabilities=dict(zip(self.classes, map(float, probabilities[i]), strict=True)),
                    heatmap=heatmap,
                    placement=where,
                    rois=regions_of_interest(
                        heatmap, where, threshold=self.threshold, max_regions=self.max_regions
                    ),
                    shortcut_score=(
                        outside_lungs_share(to_original(heatmap, where), region.mask)
                        if region is not None and region.mask is not None
                        else shortcut_score(heatmap, where, self.margin)
                    ),
                    channels=None if result.channels is None else result.channels[i],
                    channel_indices=None if result.channel_indices is None else result.channel_indices[i],
                    decode_scale=float(scales[i]) if scales is not None else 1.0,
                )
            )
        return explained
