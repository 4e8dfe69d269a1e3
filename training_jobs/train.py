"""One training job, end to end: data → patient split → fit → test-split evaluation → report,
SQL rows and (optionally) a published model version carrying its metrics.

With ``holdout_sources`` (leave-source-out) the films of those sources are set aside before the
patient split and evaluated on their own as well: the closest a single dataset comes to a
hospital the model has never seen. Their figures get their own report, ``Evaluation`` row and
manifest ``MetricRecord``, so they travel with the model. The test split is also broken down by
source (``metrics["per_source"]``).

Training runs in two phases for pretrained application models: the new head alone on frozen
ImageNet features (trained by gradient descent, ``head="dense"``, or fitted as a logistic
regression, ``head="logistic"``, see ``linear_probe``), then (``fine_tune_layers`` > 0) the top
layers of the base as well, at a tenth of the learning rate, so the large early gradients of a
random head cannot wreck the pretrained features. Models trained from scratch (``weights=none``)
train everything in one phase. Each phase stops early on validation loss and restores the best
epoch's weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cxr.core.errors import ConfigurationError
from cxr.core.imaging import InputContract
from cxr.core.imaging.contract import Contrast, LungCrop
from cxr.core.settings import Settings
from cxr.core.storage import open_store
from modelstore.manifest import validate_alias, validate_name
from modelstore.runtime import ModelRuntime
from training_jobs import records
from training_jobs.architectures import BuiltModel, build_model, freeze_base, unfreeze_top
from training_jobs.assess import assess, manifest_values
from training_jobs.by_source import per_source_metrics
from training_jobs.datasets import LoadedDataset, describe, load_dataset
from training_jobs.deshortcut import Deshortcut, augment_split
from training_jobs.linear_probe import fit_linear_heads
from training_jobs.operating_points import DEFAULT_TARGETS, choose_operating_points
from training_jobs.pipeline import Augmentation, class_weights, make_dataset, source_balanced_weights
from training_jobs.report import penalty_path_png, training_curves_png, write_html
from training_jobs.splits import DEFAULT_FRACTIONS, Split, split_holding_out_sources

log = logging.getLogger(__name__)


HeadTraining = Literal["dense", "logistic"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training job needs; stored as the run's ``params``."""

    data: str
    arch: str
    classes: tuple[str, ...]
    name: str
    image_size: int = 224
    epochs: int = 20
    weights: str = "none"
    #: How a pretrained model's new head is trained: "dense" by gradient descent on augmented
    #: batches, "logistic" as a regularised logistic regression on the frozen features.
    head: HeadTraining = "dense"
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float | None = None  # default: a tenth of learning_rate
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 5
    label_smoothing: float = 0.0
    #: Momentum of an exponential moving average of the weights while fine-tuning (0: off). The
    #: model takes the average at the end of every epoch, so validation, early stopping and the
    #: published model all see the averaged weights, not one noisy step's.
    fine_tune_ema: float = 0.0
    contrast: Contrast = "none"  # the input contract's contrast step
    #: The input contract's lung step and the segmenter it runs (a store reference such as
    #: ``lungs@production``, pinned to an exact version in the manifest).
    lung_crop: LungCrop = "none"
    segmenter: str | None = None
    seed: int = 0
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    #: Leave-source-out: sources whose films never enter train or validation and are evaluated
    #: on their own (names as ``training_jobs.datasets.entry_source`` derives them).
    holdout_sources: tuple[str, ...] = ()
    augmentation: Augmentation = field(default_factory=Augmentation)
    #: De-shortcut augmentation of the training split (markers, erased border bands); off: None.
    deshortcut: Deshortcut | None = None
    #: Weigh training images so that, within each class, every source weighs the same
    #: (``pipeline.source_balanced_weights``); off: plain balanced class weights.
    balance_sources: bool = False
    deterministic: bool = False
    publish: bool = False
    aliases: tuple[str, ...] = ()
    #: The version this model replaces, recorded as the manifest's parent (the retraining job
    #: passes the alias holder); None: the latest published version of the name, if any.
    parent_version: int | None = None
    #: Class → target sensitivity of its operating point, chosen on the validation split.
    operating_targets: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TARGETS))
    #: The per-image shift score's measure (``modelstore.shift``); "none" ships no reference.
    shift_method: Literal["mahalanobis", "knn", "none"] = "knn"
    limit: int | None = None
    bootstrap_resamples: int = 1000
    verbose: int = 2  # Keras fit verbosity: 1 progress bar, 2 one line per epoch

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    run_id: str
    report_uri: str
    metrics: dict[str, Any]
    model_ref: str | None  # NAME@VERSION when published
    parameters: int
    train_seconds: float
    history: dict[str, list[float]]
    runtime: dict[str, Any]
    head_penalties: dict[str, float] = field(default_factory=dict)  # chosen C per logistic head
    #: Figures on the held-out sources' films (leave-source-out), when any were held out.
    holdout_metrics: dict[str, Any] | None = None
    holdout_report_uri: str | None = None


def configure_runtime(seed: int, deterministic: bool) -> dict[str, Any]:
    """Seeds, opt-in op determinism, and mixed precision only where a GPU can use it."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_physical_devices("GPU")
    policy = "mixed_float16" if gpus else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return {"gpus": len(gpus), "precision_policy": policy, "deterministic": deterministic}


def _compile(
    built: BuiltModel, learning_rate: float, label_smoothing: float, ema: float = 0.0, epoch_steps: int = 0
) -> None:
    """Adam and cross-entropy on the targets ``pipeline.targets`` makes (one-hot for softmax, so
    that label smoothing applies to both heads). With ``ema`` the model's weights are replaced by
    their moving average every ``epoch_steps`` steps, i.e. at each epoch's end."""
    import keras

    averaging = (
        {"use_ema": True, "ema_momentum": ema, "ema_overwrite_frequency": max(1, epoch_steps)} if ema else {}
    )
    if built.output == "sigmoid":
        loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    optimizer = keras.optimizers.Adam(learning_rate, **averaging)
    built.model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])


def fit(
    built: BuiltModel,
    train_ds: Any,
    val_ds: Any,
    config: TrainConfig,
    weights: dict[int, float] | None,
    *,
    head_fitted: bool = False,
) -> dict:
    """Both phases; returns the merged per-epoch history. With ``head_fitted`` (a logistic head
    is already in place) the head phase is skipped and only fine-tuning, if asked, trains."""
    import keras

    def phase(epochs: int, initial_epoch: int) -> dict[str, list[float]]:
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        )
        result = built.model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=initial_epoch + epochs,
            initial_epoch=initial_epoch,
            class_weight=weights,
            callbacks=[stop],
            verbose=config.verbose,
            shuffle=False,  # the tf.data pipeline shuffles (seeded); Keras cannot shuffle a Dataset
        )
        return {k: [float(v) for v in values] for k, values in result.history.items()}

    if built.pretrained:
        freeze_base(built)
    _compile(built, config.learning_rate, config.label_smoothing)
    history: dict[str, list[float]] = {} if head_fitted else phase(config.epochs, 0)
    if built.pretrained and config.fine_tune_layers > 0 and config.fine_tune_epochs > 0:
        frozen_best = (
            float(built.model.evaluate(val_ds, verbose=0)[0]) if head_fitted else min(history["val_loss"])
        )
        frozen_weights = built.model.get_weights()
        rate = config.fine_tune_learning_rate or config.learning_rate / 10
        unfrozen = unfreeze_top(built, config.fine_tune_layers)
        log.info(
            "fine-tuning the top %d layers (%d with weights) at lr %g%s",
            config.fine_tune_layers,
            unfrozen,
            rate,
            f", weights averaged (EMA {config.fine_tune_ema})" if config.fine_tune_ema else "",
        )
        _compile(built, rate, config.label_smoothing, config.fine_tune_ema, int(train_ds.cardinality()))
        tuned = phase(config.fine_tune_epochs, len(history.get("loss", [])))
        for key, values in tuned.items():
            history.setdefault(key, []).extend(values)
        # Early stopping restores the best epoch *of this phase*; if no fine-tuning epoch beat
        # the frozen model on validation loss, the frozen model is the better one.
        if min(tuned["val_loss"]) >= frozen_best:
            built.model.set_weights(frozen_weights)
            log.info(
                "fine-tuning never beat the frozen model's validation loss %.4f; kept the frozen weights",
                frozen_best,
            )
    return history


def _weight_summary(labels: np.ndarray, sources: np.ndarray, weights: np.ndarray, classes: list[str]) -> str:
    """'class/source: n × weight' per group, for the training log."""
    groups = sorted({(int(label), str(source)) for label, source in zip(labels, sources, strict=True)})
    parts = []
    for label, source in groups:
        members = (labels == label) & (sources.astype(str) == source)
        parts.append(f"{classes[label]}/{source}: {int(members.sum())} × {float(weights[members][0]):.2f}")
    return ", ".join(parts)


def train(config: TrainConfig, settings: Settings) -> TrainResult:
    """Run one job; the TrainingRun row ends ``finished`` or ``failed`` with the reason."""
    validate_name(config.name)
    for alias in config.aliases:
        validate_alias(alias)
    run_id = records.start_run(settings, name=config.name, architecture=config.arch, params=config.params())
    log.info("training run %s: %s on %s", run_id, config.arch, config.data)
    try:
        return _train(run_id, config, settings)
    except BaseException as exc:
        records.update_run(settings, run_id, status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise


def _train(run_id: str, config: TrainConfig, settings: Settings) -> TrainResult:
    runtime = configure_runtime(config.seed, config.deterministic)
    classes = [c.strip().lower() for c in config.classes]
    built = build_model(
        config.arch, image_size=config.image_size, num_classes=len(classes), weights=config.weights
    )
    if config.head == "logistic" and not built.heads:
        raise ConfigurationError(
            f"--head logistic fits a head on an application base's pooled features; {config.arch} has none"
        )
    if built.is_ensemble and config.fine_tune_layers > 0:
        raise ConfigurationError("an ensemble's members are not fine-tuned; leave --fine-tune-layers at 0")
    lungs = _segmenter(config, settings)
    contract = InputContract(
        height=config.image_size,
        width=config.image_size,
        channels=built.channels,
        normalization=built.normalization,
        contrast=config.contrast,
        lung_crop=config.lung_crop,
        lung_model=lungs.pin if lungs else None,
    )
    data = load_dataset(
        config.data, classes, contract, settings, limit=config.limit, seed=config.seed, lungs=lungs
    )
    split = split_holding_out_sources(
        data.patient_ids,
        data.labels,
        data.sources,
        config.holdout_sources,
        seed=config.seed,
        fractions=config.fractions,
    )
    for part in ("train", "val", "test"):
        if split.indices(part).size == 0:
            raise ValueError(f"the {part} split is empty: {len(data)} images are too few to split by patient")
    records.update_run(settings, run_id, data_fingerprint=data.fingerprint, split=split.to_record(settings))

    def subset(part: str) -> tuple[Any, Any]:
        index = split.indices(part)
        return data.images[index], data.labels[index]

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = subset("train"), subset("val"), subset("test")
    weights = class_weights(y_train, len(classes))
    log.info(
        "split by patient: train %d, val %d, test %d images; held out (%s) %d; class weights %s",
        len(y_train),
        len(y_val),
        len(y_test),
        ", ".join(split.holdout_sources) or "no source",
        split.holdout.size,
        weights,
    )
    x_fit, y_fit = x_train, y_train
    w_fit = None
    if config.balance_sources:
        train_sources = np.array([source or "" for source in data.sources], dtype=str)[split.indices("train")]
        w_fit = source_balanced_weights(y_train, train_sources, len(classes))
        log.info("source-balanced weights: %s", _weight_summary(y_train, train_sources, w_fit, classes))
    if config.deshortcut is not None:
        x_fit, y_fit = augment_split(x_train, y_train, config.deshortcut, seed=config.seed)
        w_fit = None if w_fit is None else np.concatenate([w_fit] * (config.deshortcut.copies + 1))
        log.info("de-shortcut augmentation: %d training images with %d marked copies", len(x_fit),
                 config.deshortcut.copies)  # fmt: skip
    common = {
        "output": built.output,
        "num_classes": len(classes),
        "batch_size": config.batch_size,
        "seed": config.seed,
    }
    train_ds = make_dataset(
        x_fit, y_fit, contract, augmentation=config.augmentation, shuffle=True, sample_weight=w_fit, **common
    )
    # Sample weights, when given, already balance the classes.
    fit_weights = None if w_fit is not None else weights
    val_ds = make_dataset(x_val, y_val, contract, **common)

    started = time.monotonic()
    probes = {}
    if config.head == "logistic":
        probes = fit_linear_heads(
            built,
            (x_fit, y_fit),
            (x_val, y_val),
            contract,
            num_classes=len(classes),
            class_weight=weights,
            batch_size=config.batch_size,
            sample_weight=w_fit,
        )
    history = fit(built, train_ds, val_ds, config, fit_weights, head_fitted=bool(probes))
    train_seconds = time.monotonic() - started

    summary = describe(data)
    held_out = f"; sources {', '.join(split.holdout_sources)} held out" if split.holdout_sources else ""
    context = {
        "run": run_id,
        "architecture": config.arch,
        "weights": config.weights,
        "data": config.data,
        "data fingerprint": data.fingerprint,
        "split": f"by patient, seed {config.seed}, fractions {list(config.fractions)}{held_out}; "
        "evaluated on test",
        "head": config.head,
        "epochs run": len(history.get("loss", [])),
        "train minutes": round(train_seconds / 60, 2),
        "images per class and source": summary["per_class_and_source"] or "no source column",
    }
    prefix = f"reports/training/{run_id}"
    test_title = f"{config.name}: {config.arch} on the test split"
    scorer, shift_file = _calibrated_runtime(
        built,
        config,
        classes,
        contract,
        (x_train, y_train),
        (x_val, y_val),
        ref=f"{config.name} (run {run_id})",
        lungs=lungs,
    )
    result = assess(
        scorer,
        x_test,
        y_test,
        settings=settings,
        report_prefix=prefix,
        title=test_title,
        context=context,
        seed=config.seed,
        n_resamples=config.bootstrap_resamples,
        batch_size=config.batch_size,
        extra_files=_training_plots(history, probes),
    )
    metrics = result.metrics
    test_sources = [data.sources[i] for i in split.test]
    metrics["per_source"] = per_source_metrics(
        y_test, result.probs, classes, test_sources, n_resamples=config.bootstrap_resamples, seed=config.seed
    )
    store = open_store(settings=settings)
    store.put(f"{prefix}/per_source.json", json.dumps(metrics["per_source"], indent=2).encode())
    write_html(store, prefix, title=test_title, metrics=metrics, context=context)  # now with per source
    dataset_label = f"{config.data} test split (by patient, seed {config.seed}{held_out})"
    evaluations = [(dataset_label, metrics, result.report_uri)]
    holdout = None
    if split.holdout_sources:
        holdout = _assess_holdout(scorer, data, split, config, context, prefix, settings)
        evaluations.append(holdout)

    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "model.keras"
        built.model.save(model_file)
        manifest = None
        if config.publish:
            manifest = _publish(
                config,
                model_file,
                built,
                contract,
                classes,
                evaluations,
                data.fingerprint,
                settings,
                scorer,
                shift_file,
            )
        else:
            uri = store.put(f"{prefix}/model.keras", model_file.read_bytes())
            log.info("model not published; kept at %s", uri)

    version = manifest.version if manifest else None
    for label, values, report_uri in evaluations:
        records.record_evaluation(
            settings,
            model_name=config.name,
            model_version=version,
            dataset=label,
            data_fingerprint=data.fingerprint,
            n_images=values["n"],
            metrics=manifest_values(values),
            report_uri=report_uri,
            training_run_id=run_id,
        )
    run_metrics = manifest_values(metrics)
    # What the model was developed on (all splits), for model cards: images per class and source.
    run_metrics["training_data"] = summary
    if holdout is not None:
        run_metrics["leave_source_out"] = manifest_values(holdout[1]) | {"dataset": holdout[0]}
    records.update_run(
        settings,
        run_id,
        status="finished",
        metrics=run_metrics,
        report_uri=result.report_uri,
        model_version=version,
    )
    return TrainResult(
        run_id=run_id,
        report_uri=result.report_uri,
        metrics=metrics,
        model_ref=manifest.ref if manifest else None,
        parameters=int(built.model.count_params()),
        train_seconds=train_seconds,
        history=history,
        runtime=runtime | {"dataset": summary},
        head_penalties={name: fitted.penalty for name, fitted in probes.items()},
        holdout_metrics=holdout[1] if holdout else None,
        holdout_report_uri=holdout[2] if holdout else None,
    )


def _segmenter(config: TrainConfig, settings: Settings) -> Any:
    """The lung segmenter the contract's lung step runs, pulled from the model store
    (sha256-checked, safe mode); None without a lung step."""
    if config.lung_crop == "none":
        return None
    if not config.segmenter:
        raise ConfigurationError(f"--lung-crop {config.lung_crop} needs --segmenter NAME[@ALIAS|@VERSION]")
    from modelstore import open_model_store
    from modelstore.segmenter import LungSegmenter

    return LungSegmenter.load(open_model_store(settings), config.segmenter)


def holdout_label(data: str, sources: tuple[str, ...]) -> str:
    """The dataset name of leave-source-out figures, e.g. 'manifest.csv leave-source-out: actualmed,
    figure1' (in the manifest, the Evaluation row and the run's metrics)."""
    return f"{data} leave-source-out: {', '.join(sources)}"


def _assess_holdout(
    scorer: ModelRuntime,
    data: LoadedDataset,
    split: Split,
    config: TrainConfig,
    context: dict[str, Any],
    prefix: str,
    settings: Settings,
) -> tuple[str, dict[str, Any], str]:
    """(dataset label, figures, report URI) on the held-out sources' films, scored like the test
    split. Macro F1 runs over the classes present there (a held-out hospital may lack a class),
    and the figures are broken down by held-out source as well."""
    index = split.holdout
    labels = data.labels[index]
    held_out = ", ".join(split.holdout_sources)
    title = f"{config.name}: {config.arch} on held-out sources {held_out}"
    context = context | {"evaluated on": f"leave-source-out: {held_out}"}
    result = assess(
        scorer,
        data.images[index],
        labels,
        settings=settings,
        report_prefix=f"{prefix}/leave-source-out",
        title=title,
        context=context,
        seed=config.seed,
        n_resamples=config.bootstrap_resamples,
        batch_size=config.batch_size,
        present_only=True,
    )
    metrics = result.metrics
    metrics["per_source"] = per_source_metrics(
        labels,
        result.probs,
        scorer.classes,
        [data.sources[i] for i in index],
        n_resamples=config.bootstrap_resamples,
        seed=config.seed,
    )
    write_html(open_store(settings=settings), f"{prefix}/leave-source-out", title=title, metrics=metrics,
               context=context)  # fmt: skip
    label = holdout_label(config.data, split.holdout_sources)
    log.info(
        "%s: COVID AUC %s, macro-F1 %s over %s (n=%d)",
        label,
        metrics.get("covid_auc"),
        metrics["macro_f1"],
        ",".join(metrics["macro_f1_classes"]),
        metrics["n"],
    )
    return label, metrics, result.report_uri


def _training_plots(history: dict[str, list[float]], probes: dict[str, Any]) -> dict[str, bytes]:
    """Loss and accuracy per epoch when any epoch ran; the penalty path of each logistic head."""
    plots = {}
    if history.get("loss"):
        plots["training_curves.png"] = training_curves_png(history)
    if probes:
        plots["penalty_path.png"] = penalty_path_png({name: fit.val_log_loss for name, fit in probes.items()})
    return plots


def _calibrated_runtime(
    built: BuiltModel,
    config: TrainConfig,
    classes: list[str],
    contract: InputContract,
    train: tuple[Any, Any],
    val: tuple[Any, Any],
    *,
    ref: str,
    lungs: Any = None,
) -> tuple[ModelRuntime, bytes | None]:
    """The trained model in a runtime, with what the validation split decides: the operating
    points, and the shift reference (fitted on the training split's pooled features, its scores
    on the validation split mapping a raw distance to a percentile). Returns the runtime and the
    reference file's bytes."""
    from modelstore.loading import pooled_feature_layers
    from modelstore.manifest import ShiftSpec
    from modelstore.shift import fit_reference

    scorer = ModelRuntime(
        built.model, classes=classes, contract=contract, output=built.output, ref=ref,
        gradcam_layer=built.gradcam_layer, feature_layers=pooled_feature_layers(built.model), lungs=lungs,
    )  # fmt: skip
    (x_train, _), (x_val, y_val) = train, val
    scorer.operating_points = choose_operating_points(
        y_val, scorer.predict_gray(x_val, config.batch_size), classes, config.operating_targets
    )
    for name, point in scorer.operating_points.items():
        log.info("operating point %s >= %.4f: validation sensitivity %.3f (target %.2f), specificity %s",
                 name, point.threshold, point.validation_sensitivity, point.target_sensitivity,
                 point.validation_specificity)  # fmt: skip
    if config.shift_method == "none" or not scorer.feature_layers:
        if config.shift_method != "none":
            log.warning("%s has no pooled feature layer: no shift reference", config.arch)
        return scorer, None
    reference = fit_reference(scorer.features_gray(x_train, config.batch_size), method=config.shift_method)
    val_scores = reference.score(scorer.features_gray(x_val, config.batch_size))
    spec = ShiftSpec(
        sha256="0" * 64, size_bytes=0, method=config.shift_method, feature_layers=scorer.feature_layers,
        validation_scores=sorted(float(v) for v in val_scores), n_train=len(x_train),
    )  # fmt: skip
    scorer.shift = (spec, reference)
    return scorer, reference.to_bytes()


def _publish(
    config: TrainConfig,
    model_file: Path,
    built: BuiltModel,
    contract: InputContract,
    classes: list[str],
    evaluations: list[tuple[str, dict[str, Any], str]],
    fingerprint: str,
    settings: Settings,
    scorer: ModelRuntime,
    shift_file: bytes | None,
) -> Any:
    from modelstore import MetricRecord, open_model_store
    from modelstore.loading import library_versions

    store = open_model_store(settings)
    published = store.versions(config.name)
    parent = config.parent_version if config.parent_version is not None else (published or [None])[-1]
    manifest = store.publish(
        config.name,
        model_file,
        architecture=config.arch,
        classes=classes,
        input_contract=contract,
        output=built.output,
        gradcam_layer=built.gradcam_layer,
        metrics=[
            MetricRecord(dataset=label, n=values["n"], values=manifest_values(values))
            for label, values, _ in evaluations
        ],
        training_data_fingerprint=fingerprint,
        parent_version=parent,
        library_versions=library_versions(),
        description=_description(config),
        aliases=config.aliases,
        shift=(scorer.shift[0], shift_file) if scorer.shift and shift_file else None,
        operating_points=scorer.operating_points,
    )
    log.info("published %s", manifest.ref)
    return manifest


def _description(config: TrainConfig) -> str:
    if config.head == "logistic":
        how = "logistic head on frozen features" + (
            f", then {config.fine_tune_epochs} fine-tuning epochs" if config.fine_tune_layers else ""
        )
    else:
        how = f"{config.epochs} epochs"
    return f"{config.arch} (weights {config.weights}) trained by cxr train, {how}"
