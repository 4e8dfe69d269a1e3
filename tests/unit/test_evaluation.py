"""Metric code against scikit-learn on fixed predictions, and ECE against a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from training_jobs.evaluation import (
    as_class_probabilities,
    binary_auc,
    bootstrap_intervals,
    evaluate_predictions,
    expected_calibration_error,
    headline_metrics,
)

CLASSES = ["covid", "normal", "pneumonia"]


@pytest.fixture
def fixed_predictions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    y_true = rng.integers(0, 3, size=120)
    logits = rng.normal(size=(120, 3)) + 1.5 * np.eye(3)[y_true]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, probs


def test_metrics_match_scikit_learn(fixed_predictions):
    y_true, probs = fixed_predictions
    y_pred = probs.argmax(axis=1)
    report = evaluate_predictions(y_true, probs, CLASSES, n_resamples=50)

    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert report["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=[0, 1, 2]).tolist()
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2])
    for i, name in enumerate(CLASSES):
        row = report["per_class"][name]
        assert row["precision"] == pytest.approx(precision[i])
        assert row["recall"] == pytest.approx(recall[i])
        assert row["sensitivity"] == pytest.approx(recall[i])
        assert row["f1"] == pytest.approx(f1[i])
        assert row["n"] == support[i] == report["n_per_class"][name]
        assert row["auc"] == pytest.approx(skm.roc_auc_score(y_true == i, probs[:, i]))
        negatives = y_true != i
        assert row["specificity"] == pytest.approx(np.mean(y_pred[negatives] != i))
    assert report["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert report["macro_auc"] == pytest.approx(skm.roc_auc_score(y_true, probs, multi_class="ovr"))
    assert report["covid_auc"] == report["per_class"]["covid"]["auc"]


def test_auc_counts_ties_as_half_like_scikit_learn():
    positive = np.array([1, 0, 1, 0, 1, 0], dtype=bool)
    scores = np.array([0.5, 0.5, 0.9, 0.1, 0.5, 0.5])
    assert binary_auc(positive, scores) == pytest.approx(skm.roc_auc_score(positive, scores))
    assert binary_auc(np.ones(4, dtype=bool), np.arange(4.0)) is None


def test_ece_hand_computed():
    # Two bins used (M = 10): confidences 0.95, 0.95 (both right) and 0.55, 0.55 (one right).
    # bin (0.9, 1.0]: |1.0 - 0.95| = 0.05, weight 1/2; bin (0.5, 0.6]: |0.5 - 0.55| = 0.05, weight 1/2.
    probs = np.array([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45], [0.45, 0.55]])
    y_true = np.array([0, 1, 0, 0])
    assert expected_calibration_error(y_true, probs, n_bins=10) == pytest.approx(0.05)
    # Perfectly confident and right: zero; confident and always wrong: one.
    assert expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0
    assert expected_calibration_error(np.array([1, 0]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 1.0


def test_sigmoid_output_is_probability_of_second_class():
    probs = as_class_probabilities(np.array([[0.2], [0.9]]), "sigmoid")
    np.testing.assert_allclose(probs, [[0.8, 0.2], [0.1, 0.9]])


def test_bootstrap_is_seeded_and_brackets_the_estimate(fixed_predictions):
    y_true, probs = fixed_predictions

    def stat(t, p):
        return headline_metrics(t, p, CLASSES)

    first = bootstrap_intervals(y_true, probs, stat, n_resamples=200, seed=3)
    again = bootstrap_intervals(y_true, probs, stat, n_resamples=200, seed=3)
    assert first == again
    point = stat(y_true, probs)
    for key in ("accuracy", "macro_f1", "macro_auc", "covid_sensitivity", "covid_specificity", "covid_auc"):
        low, high = first[key]
        assert low <= point[key] <= high


def test_undefined_figures_are_none_not_zero():
    # Only one true class present: AUCs are undefined, and no covid prediction means no precision.
    probs = np.array([[0.1, 0.9], [0.2, 0.8]])
    report = evaluate_predictions(np.array([1, 1]), probs, ["covid", "non-covid"], n_resamples=10)
    assert report["per_class"]["covid"]["auc"] is None
    assert report["per_class"]["covid"]["precision"] is None
    assert report["macro_auc"] is None
    assert report["ci95"]["macro_auc"] is None


def test_class_never_predicted_scores_zero_f1_like_scikit_learn():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    probs = np.tile([0.1, 0.8, 0.1], (6, 1))  # always predicts class 1
    report = evaluate_predictions(y_true, probs, CLASSES, n_resamples=10)
    assert report["per_class"]["covid"]["f1"] == 0.0
    assert report["per_class"]["covid"]["precision"] is None
    expected = skm.f1_score(y_true, probs.argmax(axis=1), average="macro", zero_division=0)
    assert report["macro_f1"] == pytest.approx(expected)
