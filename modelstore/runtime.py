"""The one way a model is run: ``ModelRuntime``.

The worker, ``cxr explain``, ``cxr evaluate``, the promotion gate, the retraining job, the test
split of a training run and the benchmarks all score through it, so a model is measured exactly
as production scores it: THE preprocessing function with the manifest's input contract, one
compiled forward pass, one conversion of the output into class probabilities and one tie rule
(``modelstore.outputs``).

Keras (and TensorFlow) are imported only when a runtime is built, never at module import.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr.core import progress
from cxr.core.errors import ManifestError
from cxr.core.imaging import InputContract, preprocess
from cxr.core.imaging.preprocess import finish, preprocess_gray_region
from modelstore.manifest import Manifest, OperatingPoint, ShiftSpec
from modelstore.outputs import OutputKind, check_output_shape, class_probabilities, label_indices
from modelstore.shift import ShiftReference, percentiles
from modelstore.store import ModelStore, PulledModel, ResolvedModel

if TYPE_CHECKING:
    from cxr.core.imaging.lungs import LungMasker, LungRegion
    from cxr.explain.explainer import Explainer

log = logging.getLogger(__name__)

Forward = Callable[[np.ndarray], np.ndarray]

#: Images per forward pass when a caller hands over a whole dataset.
DEFAULT_BATCH_SIZE = 32


def compile_outputs(model: Any, input_shape: tuple[int, ...]) -> Callable[[np.ndarray], list[np.ndarray]]:
    """Like ``compile_forward`` for a model with several outputs: a list of arrays."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        signature = [tf.TensorSpec(shape=(None, *input_shape), dtype=tf.float32)]
        graph = tf.function(lambda x: model(x, training=False), input_signature=signature)
        return lambda batch: [np.asarray(part) for part in graph(batch)]
    return lambda batch: [np.asarray(keras.ops.convert_to_numpy(p)) for p in model(batch, training=False)]


def compile_forward(model: Any, input_shape: tuple[int, ...]) -> Forward:
    """``model(x, training=False)`` as a compiled function with a free batch dimension.

    On the TensorFlow backend that is a ``tf.function`` with an input signature, so batches of
    any size reuse one graph (``model.predict`` per batch rebuilds its data pipeline every call,
    which dominates on CPU). Other backends call the model eagerly.
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        signature = [tf.TensorSpec(shape=(None, *input_shape), dtype=tf.float32)]
        graph = tf.function(lambda x: model(x, training=False), input_signature=signature)
        return lambda batch: np.asarray(graph(batch))
    return lambda batch: np.asarray(keras.ops.convert_to_numpy(model(batch, training=False)))


@dataclass(frozen=True)
class Scores:
    """One batch through the model: class probabilities and, when the model ships a shift
    reference, how unlike the training data each image is."""

    probabilities: np.ndarray  # (N, classes), manifest order
    shift_scores: np.ndarray | None = None  # (N,) raw distances
    shift_percentiles: np.ndarray | None = None  # (N,) among the validation split's, 0-100
    out_of_distribution: np.ndarray | None = None  # (N,) bool: beyond the threshold percentile


def check_model_matches_manifest(model: Any, manifest: Manifest) -> None:
    """Refuse a model file whose input shape or output units disagree with its manifest: a
    64-px model must not be fed at 200 px, nor three outputs read as two classes. (Reordered
    classes keep the shapes; the manifest digest catches those: ``modelstore.integrity``.)"""
    contract = manifest.input
    input_shape = tuple(getattr(model, "input_shape", ()) or ())[1:]
    if input_shape and tuple(input_shape) != tuple(contract.shape):
        takes = "×".join(str(d) for d in input_shape)
        raise ManifestError(
            f"{manifest.ref}: the manifest says input {contract.height}×{contract.width}×"
            f"{contract.channels}, the model file takes {takes}: refused"
        )
    output_shape = tuple(getattr(model, "output_shape", ()) or ())
    units = 1 if manifest.output == "sigmoid" else len(manifest.classes)
    if output_shape and output_shape[-1] != units:
        raise ManifestError(
            f"{manifest.ref}: the manifest says a {manifest.output} output over {len(manifest.classes)} "
            f"classes ({units} units), the model file has {output_shape[-1]}: refused"
        )


class ModelRuntime:
    """A loaded model with its input contract and classes: preprocess → forward → probabilities
    → labels, and explanations of the same model.

    Thread-safe for prediction (the compiled graph is); explainers are built once per method.
    """

    def __init__(
        self,
        model: Any,
        *,
        classes: Sequence[str],
        contract: InputContract,
        output: OutputKind,
        ref: str,
        gradcam_layer: str | None = None,
        manifest: Manifest | None = None,
        identity: ResolvedModel | None = None,
        load_seconds: float = 0.0,
        feature_layers: Sequence[str] = (),
        shift: tuple[ShiftSpec, ShiftReference] | None = None,
        operating_points: Mapping[str, OperatingPoint] | None = None,
        lungs: LungMasker | None = None,
    ) -> None:
        if contract.lung_crop != "none" and lungs is None:
            raise ManifestError(f"{ref} crops to the lungs ({contract.lung_crop}) but no segmenter was given")
        self.model = model
        #: The contract's segmenter (``modelstore.segmenter``), when the contract has a lung step:
        #: the runtime holds it so that every caller preprocesses exactly as training did.
        self.lungs = lungs
        self.classes = list(classes)
        self.contract = contract
        self.output: OutputKind = output
        self.ref = ref
        self.gradcam_layer = gradcam_layer
        self.manifest = manifest
        self.identity = identity
        self.load_seconds = load_seconds
        self.forward = compile_forward(model, contract.shape)
        self.feature_layers = list(shift[0].feature_layers if shift else feature_layers)
        self.shift = shift
        self.operating_points = dict(operating_points or {})
        self._with_features: Callable[[np.ndarray], list[np.ndarray]] | None = None
        self._explainers: dict[str, Explainer] = {}
        self._lock = threading.Lock()

    # ---- building ---------------------------------------------------------------------------
    @classmethod
    def from_pulled(
        cls, pulled: PulledModel, *, warm_up: bool = True, store: ModelStore | None = None
    ) -> ModelRuntime:
        """Load a verified local copy in Keras safe mode and compile it (traced once if ``warm_up``).

        A contract with a lung step pins its segmenter; it is pulled from ``store`` (sha256-checked,
        safe mode, like the classifier), which must then be given."""
        from modelstore.loading import load_keras_model, pooled_feature_layers

        started = time.perf_counter()
        manifest = pulled.manifest
        if manifest.segmentation is not None:
            raise ManifestError(f"{manifest.ref} is a segmenter; load it with modelstore.segmenter")
        lungs = None
        if manifest.input.lung_model is not None and manifest.input.lung_crop != "none":
            if store is None:
                raise ManifestError(f"{manifest.ref} needs its segmenter {manifest.input.lung_model.ref}: "
                                    "load it with its model store")  # fmt: skip
            from modelstore.segmenter import LungSegmenter

            lungs = LungSegmenter.load(store, manifest.input.lung_model)
        model = load_keras_model(pulled.path)
        check_model_matches_manifest(model, manifest)
        shift = None
        if manifest.shift is not None and pulled.shift_path is not None:
            reference = ShiftReference.from_bytes(
                pulled.shift_path.read_bytes(), f"{manifest.ref}'s reference"
            )
            shift = (manifest.shift, reference)
        runtime = cls(
            model,
            shift=shift,
            # Without a shift reference the pooled layers still give features (sampling, adaptation).
            feature_layers=pooled_feature_layers(model),
            operating_points=manifest.operating_points,
            classes=manifest.classes,
            contract=manifest.input,
            output=manifest.output,
            ref=manifest.ref,
            gradcam_layer=manifest.gradcam_layer,
            manifest=manifest,
            identity=ResolvedModel(manifest.name, manifest.version, manifest.sha256),
            lungs=lungs,
        )
        if warm_up:
            runtime.warm_up()
        runtime.load_seconds = time.perf_counter() - started
        log.info("loaded %s (sha256 %s…) in %.2f s", manifest.ref, manifest.sha256[:12], runtime.load_seconds)
        return runtime

    @classmethod
    def load(cls, store: ModelStore, ref: str | ResolvedModel, *, warm_up: bool = True) -> ModelRuntime:
        """Resolve (unless pinned), pull (sha256-checked) and load one model version."""
        started = time.perf_counter()
        runtime = cls.from_pulled(store.pull(ref), warm_up=warm_up, store=store)
        runtime.load_seconds = time.perf_counter() - started
        return runtime

    def warm_up(self) -> None:
        """Trace the compiled graph now, so the first real batch does not pay for it."""
        self.predict_proba(np.zeros((1, *self.contract.shape), dtype=np.float32))

    # ---- scoring ----------------------------------------------------------------------------
    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """A decoded radiograph (float32 gray in [0, 1]) → this model's input tensor."""
        return preprocess(pixels, self.contract, self.lungs)

    def preprocess_region(self, pixels: np.ndarray) -> tuple[np.ndarray, LungRegion | None]:
        """``preprocess`` and the film region the lung step kept (None without a lung step):
        explanations carry their maps back to the film through it."""
        gray, region = preprocess_gray_region(pixels, self.contract, self.lungs)
        return finish(gray, self.contract), region

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, C) preprocessed inputs → (N, classes) float64 probabilities, manifest order."""
        raw = np.asarray(self.forward(np.asarray(batch, dtype=np.float32)), dtype=np.float64)
        check_output_shape(raw, self.output, len(self.classes), self.ref)
        return class_probabilities(raw, self.output)

    def predict_inputs(self, inputs: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """``predict_proba`` over any number of preprocessed inputs, ``batch_size`` at a time."""
        parts = [self.predict_proba(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes)))

    def predict_gray(self, gray: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Probabilities for gray inputs at the contract's size ((N, H, W, 1) in [0, 1], what a
        training dataset caches, see ``preprocess_gray``): each batch is finished (channels,
        normalization) exactly as ``preprocess`` would, then scored."""
        parts = [
            self.predict_proba(finish(gray[i : i + batch_size], self.contract))
            for i in progress.batches(len(gray), batch_size, "scoring")
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes)))

    def predict_pixels(
        self, images: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        """Probabilities for decoded radiographs at their own sizes."""
        parts = [
            self.predict_proba(np.stack([self.preprocess(p) for p in images[i : i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes)))

    def features(self, batch: np.ndarray) -> np.ndarray:
        """(N, D) pooled features of ``feature_layers``, concatenated (an ensemble's members side
        by side), from preprocessed inputs."""
        return self._outputs(batch)[1]

    def features_gray(self, gray: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """``features`` for cached gray inputs (see ``predict_gray``)."""
        parts = [
            self.features(finish(gray[i : i + batch_size], self.contract))
            for i in progress.batches(len(gray), batch_size, "features")
        ]
        return np.concatenate(parts)

    def score(self, batch: np.ndarray) -> Scores:
        """Probabilities and, with a shift reference, the shift score of each image, in one
        forward pass (the pooled features are on the way to the head anyway)."""
        if self.shift is None:
            return Scores(self.predict_proba(batch))
        spec, reference = self.shift
        probabilities, features = self._outputs(batch)
        raw = reference.score(features)
        ranks = percentiles(raw, np.asarray(spec.validation_scores))
        return Scores(probabilities, raw, ranks, ranks > spec.threshold_percentile)

    def score_gray(self, gray: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> Scores:
        """``score`` for cached gray inputs (see ``predict_gray``), over any number of them."""
        parts = [
            self.score(finish(gray[i : i + batch_size], self.contract))
            for i in progress.batches(len(gray), batch_size, "scoring")
        ]
        if not parts:
            return Scores(np.zeros((0, len(self.classes))))

        def joined(name: str) -> np.ndarray | None:
            values = [getattr(part, name) for part in parts]
            return None if values[0] is None else np.concatenate(values)

        return Scores(
            joined("probabilities"), joined("shift_scores"), joined("shift_percentiles"),
            joined("out_of_distribution"),
        )  # fmt: skip

    def _outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.feature_layers:
            raise ManifestError(f"{self.ref} names no feature layers: it has no pooled features to read")
        if self._with_features is None:
            import keras

            layers = [self.model.get_layer(name).output for name in self.feature_layers]
            probe = keras.Model(self.model.inputs, [self.model.outputs[0], *layers])
            self._with_features = compile_outputs(probe, self.contract.shape)
        raw, *parts = self._with_features(np.asarray(batch, dtype=np.float32))
        raw = np.asarray(raw, dtype=np.float64)
        check_output_shape(raw, self.output, len(self.classes), self.ref)
        features = np.concatenate([np.reshape(p, (len(p), -1)) for p in parts], axis=1)
        return class_probabilities(raw, self.output), features.astype(np.float64)

    def positive_at_operating_points(self, probabilities: np.ndarray) -> dict[str, np.ndarray]:
        """Class → (N,) bool: the class's probability reaches its stored threshold."""
        return {
            name: np.asarray(probabilities)[:, self.classes.index(name)] >= point.threshold
            for name, point in self.operating_points.items()
        }

    def label_indices(self, probabilities: np.ndarray) -> np.ndarray:
        """Each row's class index (ties: the class listed first)."""
        return np.asarray(label_indices(np.asarray(probabilities)), dtype=np.int64)

    def labels(self, probabilities: np.ndarray) -> list[str]:
        """Each row's class name."""
        return [self.classes[i] for i in self.label_indices(probabilities)]

    # ---- explaining -------------------------------------------------------------------------
    def explainer(self, method: str) -> Explainer:
        """The explainer of this model for ``method`` ('gradcam', 'gradcam++', 'feature-maps'),
        built once. (``cxr.explain`` sits above the model store; it is imported here lazily,
        only by callers that explain.)"""
        with self._lock:
            if method not in self._explainers:
                from cxr.explain.explainer import Explainer

                self._explainers[method] = Explainer(self, method)
            return self._explainers[method]
