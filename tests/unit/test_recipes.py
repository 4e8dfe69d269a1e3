"""Named training recipes: a recipe sets its fields, what the caller states wins, scheduled
retraining can name one, and an unknown name is refused before anything trains."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cxr.core.errors import ConfigurationError
from cxr.core.settings import Settings
from scheduler.retraining import retrain_config
from training_jobs.deshortcut import Deshortcut
from training_jobs.recipes import RECIPES, apply_recipe
from training_jobs.train import TrainConfig


def _config(**overrides) -> TrainConfig:
    return TrainConfig(data="d.csv", arch="mobilenetv2", classes=("covid", "normal", "pneumonia"),
                       name="m", **overrides)  # fmt: skip


def test_generalise_is_the_measured_leave_source_out_recipe():
    config = apply_recipe(_config(), "generalise")
    assert (config.weights, config.head, config.fine_tune_layers, config.fine_tune_epochs) == (
        "imagenet", "logistic", 40, 10,
    )  # fmt: skip
    assert (config.label_smoothing, config.lung_crop, config.segmenter) == (0.1, "box", "lungs@production")
    assert config.deshortcut == Deshortcut(copies=1)
    assert (config.arch, config.data, config.name) == ("mobilenetv2", "d.csv", "m")  # untouched


def test_what_the_caller_states_wins_over_the_recipe():
    config = apply_recipe(
        _config(fine_tune_layers=20, weights="/w"), "generalise", keep={"fine_tune_layers", "weights"}
    )
    assert config.fine_tune_layers == 20 and config.weights == "/w" and config.lung_crop == "box"


def test_an_unknown_recipe_names_the_known_ones():
    with pytest.raises(KeyError, match="known: generalise"):
        apply_recipe(_config(), "best")


def test_scheduled_retraining_takes_a_recipe(tmp_path):
    plain = retrain_config(Settings(data_dir=tmp_path), "d.csv", parent=3)
    assert plain.fine_tune_layers == 0 and plain.deshortcut is None and plain.parent_version == 3
    settings = Settings(data_dir=tmp_path, retrain_recipe="generalise", retrain_weights="/weights")
    config = retrain_config(settings, "d.csv", parent=None)
    assert config.fine_tune_layers == 40 and config.lung_crop == "box" and config.publish
    assert config.weights == "/weights"  # the site's weights file wins over 'imagenet'
    with pytest.raises(ConfigurationError, match=r"CXR_RETRAIN_RECIPE.*known: generalise"):
        retrain_config(Settings(data_dir=tmp_path, retrain_recipe="nope"), "d.csv", parent=None)


def test_the_cli_lists_the_recipes_and_refuses_others():
    from cxr.cli.main import cli

    runner = CliRunner()
    shown = runner.invoke(cli, ["train", "--help"])
    assert "--recipe [generalise]" in shown.output and RECIPES["generalise"].summary[:40] in " ".join(
        shown.output.split()
    )
    refused = runner.invoke(
        cli, ["train", "--data", "x", "--arch", "mobilenetv2", "--name", "m", "--recipe", "x"]
    )
    assert refused.exit_code == 2 and "'x' is not 'generalise'" in refused.output


def test_the_cli_keeps_the_options_given_on_the_command_line():
    from cxr.cli.train_cmd import _given_options, train

    arguments = ["--data", "x", "--arch", "mobilenetv2", "--name", "m", "--recipe", "generalise"]
    context = train.make_context("train", [*arguments, "--fine-tune-layers", "20"])
    given = _given_options(context)
    assert {"fine_tune_layers", "data", "recipe"} <= given
    assert not given & {"head", "lung_crop", "segmenter", "deshortcut", "weights", "label_smoothing"}
    config = apply_recipe(_config(fine_tune_layers=20), "generalise", keep=given)
    assert config.fine_tune_layers == 20 and config.head == "logistic"
