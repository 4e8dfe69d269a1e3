"""``cxr train`` and ``cxr evaluate``. TensorFlow is imported inside the commands only."""

from __future__ import annotations

import contextlib
import sys
from typing import get_args

import click
from click.core import ParameterSource

from cxr.cli.common import contrast_option, emit_json, handle_errors, json_option, ready_settings
from training_jobs.recipes import RECIPES, apply_recipe, recipe_names
from training_jobs.train import HeadTraining  # no TensorFlow at import

ARCH_CHOICES = (
    "simple_cnn",
    "alexnet",
    "vgg16",
    "vgg19",
    "resnet50",
    "densenet121",
    "mobilenetv2",
    "efficientnetb0",
)


def _arch(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """One architecture, or pretrained ones joined with '+' (an ensemble averaging their outputs)."""
    if value in ARCH_CHOICES:
        return value
    if "+" in value:
        from cxr.core.errors import ConfigurationError
        from training_jobs.architectures import ensemble_members

        try:
            ensemble_members(value)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc)) from exc
        return value
    raise click.BadParameter(f"{value!r} is not one of {', '.join(ARCH_CHOICES)}, nor an a+b ensemble")


def _classes(value: str) -> tuple[str, ...]:
    classes = tuple(c.strip().lower() for c in value.split(",") if c.strip())
    if len(classes) < 2:
        raise click.BadParameter("give two or more comma-separated classes, e.g. covid,normal,pneumonia")
    return classes


def _sources(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...]:
    """Comma-separated source names → a tuple (checked against the data once it is listed)."""
    return tuple(s.strip().lower() for s in (value or "").split(",") if s.strip())


def _headline(metrics: dict) -> dict:
    keys = ("accuracy", "macro_f1", "macro_auc", "covid_sensitivity", "covid_specificity", "covid_auc", "ece")
    return {k: metrics[k] for k in keys if k in metrics}


def _readable(metrics: dict) -> str:
    """'accuracy 0.812 [0.760, 0.861], ...': each headline figure with its 95% CI."""
    parts = []
    for key, value in _headline(metrics).items():
        ci = metrics["ci95"].get(key)
        text = "n/a" if value is None else f"{value:.3f}"
        parts.append(f"{key} {text}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
    return ", ".join(parts)


def _given_options(context: click.Context) -> set[str]:
    """The parameters given on the command line (or by environment), which a recipe keeps."""
    given = set()
    for name in context.params:
        source = context.get_parameter_source(name)
        if source not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
            given.add(name)
    return given


@click.command()
@click.option("--data", required=True, help="Class-folder directory or manifest CSV, local or s3://.")
@click.option(
    "--arch",
    required=True,
    callback=_arch,
    help=f"One of {', '.join(ARCH_CHOICES)}, or pretrained ones joined with '+' "
    "(e.g. mobilenetv2+resnet50+vgg16: an ensemble averaging their probabilities).",
)
@click.option(
    "--classes",
    default="covid,normal,pneumonia",
    show_default=True,
    help="Output classes in order; covid,non-covid folds normal and pneumonia together.",
)
@click.option("--image-size", type=int, default=224, show_default=True)
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--name", required=True, help="Model name in the store.")
@click.option(
    "--weights",
    default="none",
    show_default=True,
    help="none, imagenet, a local .h5 PATH, or a folder holding Keras' official no-top files "
    "(what an ensemble needs offline).",
)
@click.option(
    "--head",
    type=click.Choice(get_args(HeadTraining)),
    default="dense",
    show_default=True,
    help="How a pretrained model's new head is trained: dense (gradient descent on augmented "
    "batches, --epochs) or logistic (a regularised logistic regression on the frozen features, "
    "its penalty chosen on the validation split).",
)
@click.option(
    "--fine-tune-layers",
    type=int,
    default=0,
    show_default=True,
    help="Unfreeze the top N base layers after the head is trained (pretrained models).",
)
@click.option("--fine-tune-epochs", type=int, default=10, show_default=True)
@click.option(
    "--fine-tune-learning-rate", type=float, default=None, help="Default: a tenth of --learning-rate."
)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--learning-rate", type=float, default=1e-3, show_default=True)
@click.option(
    "--patience", type=int, default=5, show_default=True, help="Early-stopping patience (val loss)."
)
@click.option(
    "--label-smoothing", type=float, default=0.0, show_default=True, help="Cross-entropy label smoothing."
)
@contrast_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--holdout-sources",
    callback=_sources,
    default=None,
    help="Leave-source-out: comma-separated sources (a source/site column, else the prefix of "
    "source-prefixed patient ids, e.g. actualmed,figure1) whose films never enter train or "
    "validation and are evaluated on their own, the stand-in for a hospital never seen.",
)
@click.option(
    "--lung-crop",
    type=click.Choice(["none", "box", "mask"]),
    default="none",
    show_default=True,
    help="Lung step of the input contract: crop to the lungs' box, or also blank outside them.",
)
@click.option("--segmenter", default=None, help="The lung segmenter for --lung-crop, e.g. lungs@production.")
@click.option(
    "--deshortcut",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="De-shortcut copies of each training film (burned-in markers, erased border bands); 0: off.",
)
@click.option(
    "--acquisition",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="With --deshortcut: the chance that a copy is also restyled as another site's acquisition "
    "(gamma, blur or edge enhancement, lower resolution, noise, JPEG).",
)
@click.option(
    "--balance-sources",
    is_flag=True,
    help="Weigh training films so that, within each class, every source weighs the same (capped).",
)
@click.option(
    "--fine-tune-ema",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Momentum of a moving average of the weights while fine-tuning, taken at each epoch's end; 0: off.",
)
@click.option(
    "--recipe",
    type=click.Choice(recipe_names()),
    default=None,
    help="A measured set of the options above; options given explicitly win. generalise: "
    + RECIPES["generalise"].summary
    + ".",
)
@click.option(
    "--flip/--no-flip",
    default=False,
    show_default=True,
    help="Random horizontal flips (off: a flipped chest film is anatomically wrong).",
)
@click.option("--deterministic", is_flag=True, help="Deterministic TensorFlow ops (slower).")
@click.option("--limit", type=int, default=None, help="Use a seeded random subset of N images.")
@click.option("--publish", is_flag=True, help="Publish the trained model to the model store.")
@click.option("--alias", "aliases", multiple=True, help="Alias to point at the published version.")
@json_option
@handle_errors
def train(
    data: str,
    arch: str,
    classes: str,
    image_size: int,
    epochs: int,
    name: str,
    weights: str,
    head: str,
    fine_tune_layers: int,
    fine_tune_epochs: int,
    fine_tune_learning_rate: float | None,
    batch_size: int,
    learning_rate: float,
    patience: int,
    label_smoothing: float,
    contrast: str,
    seed: int,
    holdout_sources: tuple[str, ...],
    lung_crop: str,
    segmenter: str | None,
    deshortcut: int,
    acquisition: float,
    balance_sources: bool,
    fine_tune_ema: float,
    recipe: str | None,
    flip: bool,
    deterministic: bool,
    limit: int | None,
    publish: bool,
    aliases: tuple[str, ...],
    as_json: bool,
) -> None:
    """Train ARCH on DATA (split by patient), evaluate on the test split, report, optionally publish.

    Research use only. Not for clinical decisions.
    """
    from scheduler.progress import progress_display
    from training_jobs.by_source import source_lines
    from training_jobs.deshortcut import Deshortcut
    from training_jobs.pipeline import Augmentation
    from training_jobs.train import TrainConfig
    from training_jobs.train import train as run_training

    if aliases and not publish:
        raise click.UsageError("--alias needs --publish")
    if acquisition and not deshortcut:
        raise click.UsageError("--acquisition restyles de-shortcut copies: give --deshortcut N too")
    config = TrainConfig(
        data=data,
        arch=arch,
        classes=_classes(classes),
        name=name,
        image_size=image_size,
        epochs=epochs,
        weights=weights,
        head=head,  # type: ignore[arg-type]  # click.Choice has checked it
        fine_tune_layers=fine_tune_layers,
        fine_tune_epochs=fine_tune_epochs,
        fine_tune_learning_rate=fine_tune_learning_rate,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=patience,
        label_smoothing=label_smoothing,
        contrast=contrast,
        seed=seed,
        holdout_sources=holdout_sources,
        lung_crop=lung_crop,  # type: ignore[arg-type]  # click.Choice has checked it
        segmenter=segmenter,
        deshortcut=Deshortcut(copies=deshortcut, acquisition=acquisition) if deshortcut else None,
        balance_sources=balance_sources,
        fine_tune_ema=fine_tune_ema,
        augmentation=Augmentation(horizontal_flip=flip),
        deterministic=deterministic,
        publish=publish,
        aliases=aliases,
        limit=limit,
        verbose=1 if sys.stderr.isatty() and not as_json else 2,
    )
    if recipe:
        config = apply_recipe(config, recipe, keep=_given_options(click.get_current_context()))
    # Keras writes its progress to stdout; with --json, stdout carries the JSON object alone.
    with (
        contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext(),
        progress_display(quiet=as_json),
    ):
        result = run_training(config, ready_settings())
    summary = {
        "run_id": result.run_id,
        "report": result.report_uri,
        "report_html": _html_beside(result.report_uri),
        "model": result.model_ref,
        "parameters": result.parameters,
        "train_minutes": round(result.train_seconds / 60, 2),
        "metrics": _headline(result.metrics),
        "ci95": result.metrics["ci95"],
        "per_source": result.metrics["per_source"],
    }
    held = result.holdout_metrics
    if held is not None:
        summary["leave_source_out"] = {
            "sources": list(holdout_sources),
            "report": result.holdout_report_uri,
            "n": held["n"],
            "metrics": _headline(held),
            "macro_f1_classes": held["macro_f1_classes"],
            "ci95": held["ci95"],
            "per_source": held["per_source"],
        }
    if as_json:
        emit_json(summary)
        return
    click.echo(
        f"training run {result.run_id}, test split (n={result.metrics['n']}): {_readable(result.metrics)}"
    )
    for line in source_lines(result.metrics["per_source"]):
        click.echo(f"  test split, source {line}")
    if held is not None:
        click.echo(f"leave-source-out {', '.join(holdout_sources)} (n={held['n']}): {_readable(held)}")
        for line in source_lines(held["per_source"]):
            click.echo(f"  held out, source {line}")
    click.echo(f"report    {_html_beside(result.report_uri)} (and report.md, report.json beside it)")
    click.echo(f"published {result.model_ref}" if result.model_ref else "not published (use --publish)")


@click.command()
@click.option("--model", "ref", required=True, help="NAME@VERSION, NAME@ALIAS or NAME@latest.")
@click.option("--data", required=True, help="Class-folder directory or manifest CSV, local or s3://.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap CIs.")
@click.option("--limit", type=int, default=None, help="Use a seeded random subset of N images.")
@json_option
@handle_errors
def evaluate(ref: str, data: str, batch_size: int, seed: int, limit: int | None, as_json: bool) -> None:
    """Measure a published model on DATA; the figures join its manifest and the SQL catalogue."""
    from scheduler.progress import progress_display
    from training_jobs.model_eval import evaluate_model

    with progress_display(quiet=as_json):
        result = evaluate_model(ref, data, ready_settings(), batch_size=batch_size, seed=seed, limit=limit)
    summary = {
        "model": result.model_ref,
        "evaluation_id": result.evaluation_id,
        "report": result.report_uri,
        "report_html": _html_beside(result.report_uri),
        "data_fingerprint": result.data_fingerprint,
        "n": result.metrics["n"],
        "metrics": _headline(result.metrics),
        "ci95": result.metrics["ci95"],
        "per_source": result.metrics.get("per_source"),
        "operating_points": result.metrics.get("operating_points"),
        "site_verdict": result.metrics["site_verdict"],
    }
    if as_json:
        emit_json(summary)
        return
    from training_jobs.by_source import source_lines

    click.echo(f"{result.model_ref} on {data} (n={result.metrics['n']}): {_readable(result.metrics)}")
    for line in source_lines(result.metrics.get("per_source") or {}):
        click.echo(f"  source {line}")
    points = result.metrics.get("operating_points")
    if points:
        for name, threshold in points["thresholds"].items():
            figures = []
            for kind in ("sensitivity", "specificity"):
                value, ci = points.get(f"{name}_{kind}_at_op"), points["ci95"].get(f"{name}_{kind}_at_op")
                text = "n/a" if value is None else f"{value:.3f}"
                interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and value is not None else ""
                figures.append(f"{kind} {text}{interval}")
            click.echo(f"  operating point {name} >= {threshold:.4f}: " + ", ".join(figures))
    click.echo(f"verdict: {result.metrics['site_verdict']['text']}")
    click.echo(f"report {_html_beside(result.report_uri)} (and report.md, report.json beside it)")


@click.command("train-segmenter")
@click.option(
    "--masks", required=True, help="Manifest CSV of lung masks (image_path, mask_path), local or s3://."
)
@click.option(
    "--images", required=True, help="Folder the masks' image paths are relative to, local or s3://."
)
@click.option("--name", default="lungs", show_default=True, help="Model name in the store.")
@click.option("--size", type=int, default=96, show_default=True)
@click.option("--epochs", type=int, default=60, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--publish", is_flag=True, help="Publish the segmenter to the model store.")
@click.option("--alias", "aliases", multiple=True, help="Alias to point at the published version.")
@handle_errors
def train_segmenter(
    masks: str,
    images: str,
    name: str,
    size: int,
    epochs: int,
    seed: int,
    publish: bool,
    aliases: tuple[str, ...],
) -> None:
    """Train the lung-field U-Net on MASKS (split by patient), report Dice, optionally publish.

    Research use only. Not for clinical decisions.
    """
    from training_jobs.segmenter import SegmenterConfig
    from training_jobs.segmenter import train_segmenter as run

    if aliases and not publish:
        raise click.UsageError("--alias needs --publish")
    config = SegmenterConfig(masks=masks, images=images, name=name, size=size, epochs=epochs, seed=seed,
                             publish=publish, aliases=aliases)  # fmt: skip
    result = run(config, ready_settings())
    click.echo(
        f"Dice train {result.dice['train']:.3f} val {result.dice['val']:.3f} test {result.dice['test']:.3f} "
        f"(n={result.n['test']}); bad test masks {result.bad_test_masks}; "
        f"model {result.model_ref or 'not published'}"
    )


def _html_beside(report_json_uri: str) -> str:
    """The HTML page written beside a report's JSON (``training_jobs.report.write_html``)."""
    return report_json_uri.rsplit("/", 1)[0] + "/report.html"
