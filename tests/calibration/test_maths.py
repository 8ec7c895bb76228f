"""Calibration maths on hand-made logits: temperature recovery, ECE, NLL, thresholds that meet their target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safety_modules.calibration import (
    Target,
    budget_thresholds,
    choose_thresholds,
    fit_head_temperature,
    fit_temperature,
    nll_at,
    parse_target,
    policy_metrics,
    recall_threshold,
    unmet_targets,
)
from safety_modules.metrics import (
    ece_noise_floor,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)
from safety_modules.policy import SafetyPolicy
from safety_modules.taxonomy import Taxonomy


def sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from that row's distribution: a perfectly calibrated set."""
    cumulative = probs.cumsum(1)
    return (rng.random((len(probs), 1)) > cumulative).sum(1).clip(max=probs.shape[1] - 1)


def softmax(z: np.ndarray) -> np.ndarray:
    return torch.as_tensor(z).softmax(-1).numpy()


@pytest.mark.parametrize("true_t", [0.4, 2.5])
def test_a_known_temperature_is_recovered(true_t):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20000, 4))
    labels = sample_labels(softmax(logits / true_t), rng)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    assert negative_log_likelihood(softmax(logits / fitted), labels) < negative_log_likelihood(softmax(logits), labels)


def test_ece_of_a_perfectly_calibrated_set_is_near_zero_and_of_an_overconfident_one_is_not():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (20000, 7))
    probs = softmax(logits)
    labels = sample_labels(probs, rng)
    assert expected_calibration_error(probs, labels) < 0.015
    assert expected_calibration_error(softmax(logits * 3), labels) > 0.1  # sharpened: overconfident


def test_the_ece_noise_floor_is_what_a_calibrated_head_shows_on_few_items():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (150, 4))
    probs = softmax(logits)
    calibrated = [expected_calibration_error(probs, sample_labels(probs, rng)) for _ in range(100)]
    floor = ece_noise_floor(probs)
    assert floor == pytest.approx(np.mean(calibrated), rel=0.15)
    assert floor > 0.05  # 150 items: noise alone gives an ECE far from 0
    assert ece_noise_floor(np.tile(probs, (40, 1))) < floor / 4  # and it shrinks as 1/sqrt(N)


def test_ece_and_reliability_by_hand():
    # confidences 0.9, 0.9 (one right), 0.6 (right): bins (0.8667, 0.9333] and (0.5333, 0.6]
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]])
    labels = np.array([0, 0, 0])
    bins = reliability_bins(probs, labels)
    filled = bins["count"] > 0
    assert bins["count"][filled].tolist() == [1, 2]
    assert bins["accuracy"][filled].tolist() == [1.0, 0.5]
    # ECE = 1/3 * |1 - 0.6| + 2/3 * |0.5 - 0.9|
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4 / 3 + 0.8 / 3)
    assert negative_log_likelihood(probs, labels) == pytest.approx(-(math.log(0.9) + math.log(0.1) + math.log(0.6)) / 3)


def test_the_fit_is_the_nll_minimum_and_a_bound_is_reported():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (400, 4))
    labels = sample_labels(softmax(logits / 1.7), rng)
    fit = fit_head_temperature(logits, labels)
    grid = np.exp(np.linspace(np.log(0.5), np.log(5.0), 2001))
    best = grid[np.argmin([nll_at(logits, labels, t) for t in grid])]
    assert fit.temperature == pytest.approx(best, rel=2e-3)  # LBFGS lands on the grid's minimum
    assert fit.nll_after < fit.nll_before and not fit.at_bound and fit.note.startswith("T > 1")
    # every item classified right with a margin: the NLL falls all the way to T -> 0, the fit stops at the bound
    separable = np.eye(3)[labels % 3] * 5.0
    fit = fit_head_temperature(separable, labels % 3)
    assert fit.at_bound and fit.temperature == pytest.approx(0.01) and "WARNING" in fit.note


def test_recall_and_budget_thresholds():
    scores = np.array([0.9, 0.8, 0.7, 0.1], dtype=np.float32)
    t = recall_threshold(scores, 0.75)
    assert t == pytest.approx(0.7) and (scores >= t).mean() >= 0.75
    assert recall_threshold(scores, 1.0) == pytest.approx(0.1)
    assert recall_threshold(np.array([]), 0.9) is None
    safe = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.1], [0.05, 0.3]], dtype=np.float32)
    one = budget_thresholds(safe, 0.25)  # one of four safe items may cross, over the union of both columns
    assert ((safe >= np.array(one)).any(1)).sum() <= 1
    none = budget_thresholds(safe, 0.0)
    assert not (safe >= np.array(none)).any()
    assert budget_thresholds(np.array([[1.0]], dtype=np.float32), 0.0) == [math.inf]  # nothing below 1 works


def synthetic_validation(seed: int, n: int = 400):
    """Probabilities for a 4-level, 7-type taxonomy with labels that loosely follow them."""
    rng = np.random.default_rng(seed)
    tax = Taxonomy()
    levels = rng.choice(4, n, p=[0.5, 0.15, 0.15, 0.2])
    types = np.where(levels == 0, 6, rng.choice([1, 2, 4], n))
    level_logits = rng.normal(0, 1, (n, 4)) + 2.0 * np.eye(4)[levels]
    type_logits = rng.normal(0, 1, (n, 7)) + 2.0 * np.eye(7)[types]
    return tax, softmax(level_logits), softmax(type_logits), levels, types


@pytest.mark.parametrize("per_type", [False, True])
@pytest.mark.parametrize("target", [Target(recall=0.95), Target(recall=0.8), Target(0.9, max_over_refusal=0.03)])
def test_chosen_thresholds_meet_the_target_on_validation(per_type, target):
    tax, lp, tp, levels, types = synthetic_validation(3)
    choice = choose_thresholds(lp, tp, levels, types, tax, target, per_type=per_type)
    policy = SafetyPolicy.from_dict(choice.policy, tax)  # the written policy loads as a policy
    metrics = policy_metrics(policy, lp, tp, levels, types)
    assert unmet_targets(metrics, target, per_type) == []
    if target.max_over_refusal is None:
        assert metrics["recall"] >= target.recall and metrics["refuse_recall"] >= target.recall
    else:
        assert metrics["over_refusal"] <= target.max_over_refusal
    if per_type:
        for name in ("illegal_risk", "insults_bullying", "privacy"):
            assert metrics["types"][name]["recall"] >= target.recall
        # types without validation items keep the shared value
        assert choice.hint["politics"] == choice.hint["fairness"]


def test_parse_target():
    assert parse_target("recall=0.9") == 0.9
    for bad in ("precision=0.9", "recall", "recall=abc", "recall=1.5"):
        with pytest.raises(ValueError, match="target"):
            parse_target(bad)
