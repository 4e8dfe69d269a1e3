"""Entry point: ``cxr <command>``. Heavy imports (TensorFlow) happen inside the commands that
need them, so ``cxr config`` and ``cxr models list`` start fast."""

from __future__ import annotations

import logging

import click

from cxr import __version__
from cxr.cli.adapt_cmd import adapt
from cxr.cli.config_cmd import config
from cxr.cli.db_cmd import db
from cxr.cli.errors import CxrGroup
from cxr.cli.explain_cmd import explain
from cxr.cli.exporter_cmd import exporter
from cxr.cli.jobs_cmd import jobs
from cxr.cli.models_cmd import models
from cxr.cli.retrain_cmd import retrain
from cxr.cli.score_cmd import score
from cxr.cli.train_cmd import evaluate, train, train_segmenter
from cxr.cli.web_cmd import web


@click.group(cls=CxrGroup)
@click.version_option(__version__, prog_name="cxr")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level, with TensorFlow's start-up lines.")
def cli(verbose: bool) -> None:
    """cxr: screen chest X-ray archives for COVID-19 and pneumonia, explain every call.

    Research use only. Not for clinical decisions.
    """
    if not verbose:  # absl's and oneDNN's start-up lines; -v shows them
        from cxr.cli.quiet import silence_tensorflow_startup

        silence_tensorflow_startup()
    from cxr.core.settings import get_settings

    level = "DEBUG" if verbose else get_settings().log_level
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations are routine here


cli.add_command(config)
cli.add_command(db)
cli.add_command(explain)
cli.add_command(models)
cli.add_command(score)
cli.add_command(jobs)
cli.add_command(train)
cli.add_command(evaluate)
cli.add_command(train_segmenter)
cli.add_command(adapt)
cli.add_command(retrain)
cli.add_command(exporter)
cli.add_command(web)


if __name__ == "__main__":
    cli()
