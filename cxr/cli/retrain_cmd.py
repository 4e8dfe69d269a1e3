"""``cxr retrain``: run the scheduled retraining job now (train, publish, promotion gate)."""

from __future__ import annotations

import click

from cxr.cli.common import emit_json, handle_errors, json_option, ready_settings


@click.command()
@click.option("--send", is_flag=True, help="Send it to the 'train' queue instead of running it here.")
@json_option
@handle_errors
def retrain(send: bool, as_json: bool) -> None:
    """Train on CXR_RETRAIN_DATA, publish, and move CXR_PROMOTION_ALIAS only if not worse on
    CXR_RETRAIN_EVAL_DATA. Beat runs the same task on CXR_RETRAIN_SCHEDULE."""
    settings = ready_settings()
    if send:
        from worker.app import RETRAIN, app

        app.send_task(RETRAIN)
        click.echo("retraining task sent to queue 'train'")
        return
    from scheduler.retraining import retrain as run_retraining

    result = run_retraining(settings)
    if as_json:
        emit_json(result.as_dict())
    else:
        verdict = "promoted" if result.promoted else "not promoted"
        click.echo(
            f"{result.model_name}@{result.candidate_version} {verdict} to {result.alias}: {result.reason}"
        )
