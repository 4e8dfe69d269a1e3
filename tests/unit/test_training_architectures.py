"""Every architecture builds at a small size with random weights and has the right outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr.core.errors import ConfigurationError
from tests.services import SHARED_DIR
from training_jobs.architectures import ARCHITECTURES, build_model, freeze_base, unfreeze_top

MOBILENET_WEIGHTS = Path(
    SHARED_DIR / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
)
# Every architecture once with a softmax head; the sigmoid head is the same code, checked on the
# cheap ones. Application bases need at least 32 px.
CASES = [(arch, 3) for arch in ARCHITECTURES] + [("simple_cnn", 2), ("alexnet", 2), ("mobilenetv2", 2)]


@pytest.mark.parametrize(("arch", "num_classes"), CASES)
def test_builds_with_right_output(arch, num_classes):
    size = 32
    built = build_model(arch, image_size=size, num_classes=num_classes, weights="none")
    model = built.model
    assert model.input_shape == (None, size, size, built.channels)
    out = np.asarray(model.predict(np.zeros((2, size, size, built.channels), np.float32), verbose=0))
    if num_classes == 2:
        assert built.output == "sigmoid" and out.shape == (2, 1)
    else:
        assert built.output == "softmax" and out.shape == (2, 3)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    assert model.get_layer(built.gradcam_layer).output.shape[-1] > 1  # Grad-CAM target at top level
    assert not any(type(layer).__name__ == "Lambda" for layer in model.layers)


def test_unknown_arch_and_weights_for_scratch_models_are_refused():
    with pytest.raises(ConfigurationError, match="unknown architecture"):
        build_model("lenet", image_size=32, num_classes=2)
    with pytest.raises(ConfigurationError, match="from scratch"):
        build_model("simple_cnn", image_size=32, num_classes=2, weights="imagenet")
    with pytest.raises(ConfigurationError, match="does not exist"):
        build_model("mobilenetv2", image_size=32, num_classes=2, weights="/nonexistent/weights.h5")


@pytest.mark.skipif(not MOBILENET_WEIGHTS.exists(), reason="offline ImageNet weights not on this machine")
def test_weights_from_a_path_then_freeze_and_unfreeze_top_layers():
    built = build_model("mobilenetv2", image_size=32, num_classes=3, weights=str(MOBILENET_WEIGHTS))
    assert built.pretrained and built.normalization == "symmetric"
    freeze_base(built)
    assert all(not layer.trainable for layer in built.base_layers)
    assert unfreeze_top(built, 10) > 0
    assert not any(layer.trainable for layer in built.base_layers[:-10])
    assert all(not layer.trainable for layer in built.base_layers if "bn" in layer.name.lower())


def test_ensemble_members_see_their_own_normalization_and_average():
    import keras

    from cxr.core.imaging import InputContract
    from cxr.core.imaging.preprocess import normalize

    built = build_model("mobilenetv2+resnet50+efficientnetb0", image_size=32, num_classes=3)
    assert built.is_ensemble and built.normalization == "unit" and built.channels == 3
    assert built.gradcam_layer == "out_relu" and len(built.heads) == 3
    model = built.model
    x = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    for member, normalization in (
        ("mobilenetv2", "symmetric"),
        ("resnet50", "caffe"),
        ("efficientnetb0", "raw255"),
    ):
        layer = keras.Model(model.inputs, model.get_layer(f"{member}_input_normalization").output)
        contract = InputContract(height=32, width=32, channels=3, normalization=normalization)
        np.testing.assert_allclose(np.asarray(layer(x)), normalize(x, contract), rtol=1e-5, atol=1e-4)
    heads = keras.Model(model.inputs, [model.get_layer(h.dense_layer).output for h in built.heads])
    expected = np.mean([np.asarray(out) for out in heads(x)], axis=0)
    np.testing.assert_allclose(np.asarray(model(x)), expected, atol=1e-6)


@pytest.mark.parametrize(
    "name", ["simple_cnn+vgg16", "vgg16+vgg16", "vgg16+", "mobilenetv2+lenet", "resnet50+densenet121"]
)
def test_bad_ensembles_are_refused(name):
    with pytest.raises(ConfigurationError, match="ensemble"):
        build_model(name, image_size=32, num_classes=2)


def test_a_weights_folder_is_searched_for_keras_official_file_names(tmp_path):
    from training_jobs.architectures import resolve_weights

    (tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"h5")
    assert resolve_weights(str(tmp_path), "vgg16").endswith(
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )
    with pytest.raises(ConfigurationError, match=r"resnet50_weights_tf_dim_ordering_tf_kernels_notop\.h5"):
        resolve_weights(str(tmp_path), "resnet50")


def test_cli_refuses_a_bad_ensemble_before_loading_any_data(tmp_path):
    from click.testing import CliRunner

    from cxr.cli.main import cli

    args = ["train", "--data", str(tmp_path / "absent.csv"), "--name", "x", "--arch"]
    result = CliRunner().invoke(cli, [*args, "vgg16+simple_cnn"])
    assert result.exit_code == 2 and "ensemble" in result.output
    result = CliRunner().invoke(cli, [*args, "lenet"])
    assert result.exit_code == 2 and "not one of" in result.output
