"""Two training levers against source shortcuts: source-balanced weights and restyled
acquisition in the de-shortcut copies. Both are training-only and off by default."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.core.imaging import InputContract
from training_jobs.deshortcut import Deshortcut, augment_split, burn, restyle
from training_jobs.pipeline import class_weights, make_dataset, source_balanced_weights

# A training split shaped like cxr-dev without Actualmed and Figure1: covid from one source only,
# eight normal films from that source beside 188 from another.
train_labels = np.array([0] * 230 + [1] * 8 + [1] * 188 + [2] * 52 + [2] * 157)
train_sources = np.array(["ieee8023"] * 238 + ["nih"] * 188 + ["ieee8023"] * 52 + ["nih"] * 157)


def group_total(weights: np.ndarray, label: int, source: str) -> float:
    return float(weights[(train_labels == label) & (train_sources == source)].sum())


def test_classes_keep_their_balanced_totals():
    weights = source_balanced_weights(train_labels, train_sources, 3)
    plain = class_weights(train_labels, 3)
    for label in range(3):
        members = train_labels == label
        assert weights[members].sum() == pytest.approx(plain[label] * members.sum(), rel=1e-5)


def test_sources_weigh_the_same_within_a_class_unless_capped():
    weights = source_balanced_weights(train_labels, train_sources, 3)
    # pneumonia: 52 vs 157 films, within the cap: equal halves
    assert group_total(weights, 2, "ieee8023") == pytest.approx(group_total(weights, 2, "nih"), rel=1e-5)
    # normal: 8 vs 188 films would need 12x; the cap (4x) stops it, but the few still gain
    few, many = group_total(weights, 1, "ieee8023"), group_total(weights, 1, "nih")
    assert few < many
    assert few / 8 > 3 * (many / 188)
    # covid has one source: plain class weights
    np.testing.assert_allclose(weights[train_labels == 0], class_weights(train_labels, 3)[0], rtol=1e-6)


def test_a_single_source_gives_plain_class_weights():
    weights = source_balanced_weights(train_labels, np.full(len(train_labels), "nih"), 3)
    plain = class_weights(train_labels, 3)
    np.testing.assert_allclose(weights, [plain[label] for label in train_labels], rtol=1e-6)


def test_make_dataset_carries_sample_weights_to_keras():
    images = np.zeros((5, 16, 16, 1), np.float32)
    contract = InputContract(height=16, width=16, channels=1, normalization="unit")
    weights = np.arange(5, dtype=np.float32)
    x, y, w = next(iter(make_dataset(images, np.zeros(5), contract, output="sigmoid", batch_size=8,
                                     sample_weight=weights)))  # fmt: skip
    assert x.shape == (5, 16, 16, 1) and y.shape == (5, 1)
    np.testing.assert_array_equal(np.asarray(w), weights)
    with pytest.raises(ValueError, match="no labels"):
        make_dataset(images, None, contract, output="sigmoid", batch_size=8, sample_weight=weights)


def film() -> np.ndarray:
    """A smooth gray film with two darker 'lungs', so blur and sharpening have edges to act on."""
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    image = 0.7 - 0.3 * ((np.abs(xx - 0.3) < 0.12) | (np.abs(xx - 0.7) < 0.12)) * (np.abs(yy - 0.5) < 0.3)
    return image.astype(np.float32)[..., None]


def test_restyle_stays_a_film_and_changes_it():
    rng = np.random.default_rng(0)
    original = film()
    outs = [restyle(original, rng) for _ in range(20)]
    for out in outs:
        assert out.shape == original.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert np.corrcoef(out.ravel(), original.ravel())[0, 1] > 0.8  # still the same anatomy
    assert all(not np.array_equal(out, original) for out in outs)


def test_restyled_copies_are_seeded_and_off_leaves_the_copies_as_before():
    images = np.repeat(film()[None], 4, axis=0)
    labels = np.array([0, 1, 2, 0])
    styled, y = augment_split(images, labels, Deshortcut(acquisition=1.0), seed=5)
    again, _ = augment_split(images, labels, Deshortcut(acquisition=1.0), seed=5)
    np.testing.assert_array_equal(styled, again)
    assert list(y) == [0, 1, 2, 0] * 2
    np.testing.assert_array_equal(styled[:4], images)
    plain, _ = augment_split(images, labels, Deshortcut(), seed=5)
    assert not np.array_equal(styled[4:], plain[4:])
    # acquisition 0 draws nothing extra from the stream: each copy is exactly ``burn``'s, as
    # before restyling existed, so earlier runs' copies are reproduced
    rng = np.random.default_rng(5)
    np.testing.assert_array_equal(plain[4:], np.stack([burn(image, rng, Deshortcut()) for image in images]))


def test_cli_refuses_acquisition_without_deshortcut_copies(tmp_path):
    from click.testing import CliRunner

    from cxr.cli.main import cli

    result = CliRunner().invoke(
        cli, ["train", "--data", str(tmp_path), "--arch", "simple_cnn", "--name", "m", "--acquisition", "0.5"]
    )
    assert result.exit_code == 2 and "give --deshortcut N too" in result.output
