"""One uploaded film → the call, exactly as a job would make it, plus a Grad-CAM overlay.

The film goes through the one decoder (``decode_image``, with the web's byte and pixel limits)
and the one model runtime (``ModelRuntime.score``: THE preprocessing, probabilities, the tie rule
and the shift score in one pass; ``runtime.explainer`` for Grad-CAM). Models are loaded through
the worker's model cache (pulled, sha256-checked, safe mode, LRU), keyed by the pinned version,
so an alias that moves is followed on the next request. Nothing is stored: the bytes, the
decoded pixels and the overlay live only for the request.
"""

from __future__ import annotations

import base64
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr import INTENDED_USE
from cxr.core.errors import ImageError
from cxr.core.imaging import decode_image
from cxr.core.imaging.decode import no_contrast
from cxr.core.outcomes import one_line
from cxr.core.settings import Settings
from modelstore import open_model_store

log = logging.getLogger(__name__)

#: One film at a time through TensorFlow: the web serves people, not batches, and this bounds
#: the memory a burst of uploads can take.
_INFERENCE_LOCK = threading.Lock()


@dataclass(frozen=True)
class FilmResult:
    """What the page and the API show for one film."""

    model: str
    classes: list[str]
    label: str | None  # None: the model abstained (CXR_SHIFT_POLICY=abstain and the film is flagged)
    abstained_reason: str | None
    probabilities: dict[str, float]
    decisions: dict[str, dict[str, Any]]  # class → threshold and positive at the operating point
    shift: dict[str, Any] | None  # None: the model ships no shift reference
    explained_class: str
    shortcut_score: float | None
    image: dict[str, Any]  # format, width, height
    overlay_png: bytes

    def to_json(self, include_overlay: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": self.model,
            "label": self.label,
            "abstained_reason": self.abstained_reason,
            "probabilities": self.probabilities,
            "operating_points": self.decisions,
            "shift": self.shift,
            "explanation": {
                "method": "gradcam",
                "explained_class": self.explained_class,
                "shortcut_score": self.shortcut_score,
            },
            "image": self.image,
            "intended_use": INTENDED_USE,
        }
        if include_overlay:
            data["explanation"]["overlay_png_base64"] = base64.b64encode(self.overlay_png).decode()
        return data

    @property
    def overlay_data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.overlay_png).decode()


class Predictor:
    """Resolves ``NAME@REF`` and runs one film through the cached runtime."""

    def __init__(self, settings: Settings) -> None:
        from worker.model_cache import process_cache

        self.settings = settings
        self.store = open_model_store(settings, catalogue=False)
        # The process's cache: with no broker, jobs scored in this process share its models.
        self.cache = process_cache(settings)

    def warm_up_in_background(self, model_ref: str) -> None:
        """Load ``model_ref`` now, in a thread; a model that cannot load is only logged (the
        request that asks for it will say why)."""

        def load() -> None:
            try:
                with _INFERENCE_LOCK:
                    self.cache.get(self.store.resolve(model_ref))
            except Exception as exc:  # the server still starts: uploads name their model
                log.warning("default model %s not loaded at start: %s", model_ref, one_line(exc))

        threading.Thread(target=load, name="cxr-web-warm-up", daemon=True).start()

    def predict(self, data: bytes, model_ref: str) -> FilmResult:
        """Decode, score and explain one film. Raises ``ImageError`` for a film that cannot be
        read (with the reason) and ``ModelNotFound`` for an unknown model or alias."""
        from cxr.explain.geometry import to_original
        from cxr.explain.render import overlay_png

        settings = self.settings
        resolved = self.store.resolve(model_ref)
        with _INFERENCE_LOCK:
            runtime = self.cache.get(resolved)
        decoded = decode_image(
            data,
            max_bytes=min(settings.web_max_upload_bytes, settings.max_image_bytes),
            max_pixels=min(settings.web_max_upload_pixels, settings.max_image_pixels),
            target_side=runtime.contract.decode_side,  # reduced as the worker decodes: same pixels
        )
        blank = no_contrast(decoded.pixels)
        if blank is not None:  # refused as the worker skips it
            raise ImageError(blank)
        with _INFERENCE_LOCK:
            scores = runtime.score(runtime.preprocess(decoded.pixels)[None])
            item = runtime.explainer("gradcam").explain([decoded.pixels], scales=[decoded.scale])[0]
            overlay = overlay_png(decoded.pixels, to_original(item.heatmap, item.placement))
        probabilities = np.asarray(scores.probabilities)
        label: str | None = runtime.labels(probabilities)[0]
        shift = None
        abstained = None
        if scores.shift_percentiles is not None and runtime.shift is not None:
            percentile = float(scores.shift_percentiles[0])
            flagged = bool(scores.out_of_distribution[0])
            shift = {
                "percentile": round(percentile, 2),
                "out_of_distribution": flagged,
                "threshold_percentile": runtime.shift[0].threshold_percentile,
            }
            if flagged and settings.shift_policy == "abstain":  # as the worker does
                abstained = f"unlike the training data (shift percentile {percentile:.1f})"
                label = None
        positive = runtime.positive_at_operating_points(probabilities)
        decisions = {
            name: {
                "threshold": round(point.threshold, 6),
                "positive": bool(positive[name][0]),
                "target_sensitivity": point.target_sensitivity,
            }
            for name, point in runtime.operating_points.items()
        }
        return FilmResult(
            model=runtime.ref,
            classes=list(runtime.classes),
            label=label,
            abstained_reason=abstained,
            probabilities={
                c: round(float(p), 6) for c, p in zip(runtime.classes, probabilities[0], strict=True)
            },
            decisions=decisions,
            shift=shift,
            explained_class=item.explained_class,
            shortcut_score=None if item.shortcut_score is None else round(item.shortcut_score, 4),
            image={"format": decoded.format, "width": decoded.width, "height": decoded.height},
            overlay_png=overlay,
        )
