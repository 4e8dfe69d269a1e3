"""``cxr adapt``: refit a model's logistic heads on a site's labelled films (TensorFlow inside)."""

from __future__ import annotations

import click

from cxr.cli.common import emit_json, handle_errors, json_option, ready_settings


def _figure(metrics: dict, key: str) -> str:
    value, ci = metrics.get(key), metrics["ci95"].get(key)
    text = "n/a" if value is None else f"{value:.3f}"
    return f"{key} {text}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and value is not None else "")


@click.command()
@click.option("--model", "ref", required=True, help="The parent: NAME@VERSION, NAME@ALIAS or NAME@latest.")
@click.option(
    "--data", required=True, help="The site's labelled manifest CSV (path,label,patient_id[,site])."
)
@click.option("--name", required=True, help="Model name of the adapted version.")
@click.option(
    "--mix",
    type=click.Choice(["original", "local-only"]),
    default="original",
    show_default=True,
    help="original: fit on the parent's training films and the local ones, the local share chosen by "
    "cross-validation; local-only: the local films alone.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Folds and bootstrap seed.")
@click.option("--publish", is_flag=True, help="Publish the adapted version (child of the parent).")
@click.option("--alias", "aliases", multiple=True, help="Alias to point at the published version.")
@json_option
@handle_errors
def adapt(
    ref: str,
    data: str,
    name: str,
    mix: str,
    seed: int,
    publish: bool,
    aliases: tuple[str, ...],
    as_json: bool,
) -> None:
    """Adapt a model to a site: refit its heads on the frozen features of the site's films, with the
    penalty and mix chosen, and the figures measured, by patient-grouped cross-validation.

    Promote with `cxr models gate NAME VERSION --data DATA`: on these films the gate uses the
    cross-validated figures, never the ones on the films the heads were fitted on.
    Research use only. Not for clinical decisions.
    """
    from scheduler.progress import progress_display
    from training_jobs.adapt_job import adapt_model

    if aliases and not publish:
        raise click.UsageError("--alias needs --publish")
    with progress_display(quiet=as_json):
        outcome = adapt_model(
            ref,
            data,
            name,
            ready_settings(),
            mix=mix,
            publish=publish,
            aliases=aliases,
            seed=seed,  # type: ignore[arg-type]
        )
    r = outcome.result
    keys = ("accuracy", "macro_f1", "macro_auc", "covid_sensitivity", "covid_specificity", "covid_auc")
    cross_validated = {
        role: {k: metrics.get(k) for k in keys} | {"ci95": metrics["ci95"]}
        for role, metrics in (("adapted", r.cv_metrics), ("unadapted", r.parent_metrics))
    }
    summary = {
        "parent": outcome.parent, "published": outcome.published, "mix": mix, "n_local": outcome.n_local,
        "n_per_class": outcome.n_per_class, "n_original": outcome.n_original, "folds": r.folds,
        "penalty": r.penalty, "local_share": r.local_share,
        "local_data_fingerprint": outcome.local_fingerprint, "cross_validated": cross_validated,
        "operating_points": {c: p.model_dump() for c, p in r.operating_points.items()},
    }  # fmt: skip
    if as_json:
        emit_json(summary)
        return
    click.echo(f"{outcome.parent} adapted on {data} (n={outcome.n_local}, {outcome.n_per_class}; "
               f"{outcome.n_original} original training films; mix {mix}, C={r.penalty:g}, "
               f"local share {r.local_share:g})")  # fmt: skip
    click.echo(f"cross-validated over {r.folds} patient-grouped folds (nested), the same films for both:")
    for label, metrics in (("adapted  ", r.cv_metrics), ("unadapted", r.parent_metrics)):
        click.echo(f"  {label} " + ", ".join(_figure(metrics, k) for k in keys if k in metrics))
    for name_, point in r.operating_points.items():
        click.echo(
            f"  operating point {name_} >= {point.threshold:.4f} (target sensitivity "
            f"{point.target_sensitivity}), recalibrated on the cross-validated probabilities"
        )
    click.echo(f"published {outcome.published}" if outcome.published else "not published (use --publish)")
