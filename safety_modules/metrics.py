"""Classification metrics for the safety head (numpy + scikit-learn only; shared with evaluation).

Inputs are the true level/type ids and the head's predicted probabilities. The
risk score used for risky-vs-safe AUROC is ``1 - P(level 0)``: the probability mass
the head puts on any risky level. A sample counts as risky when its true level is
above 0.

Calibration: ECE (expected calibration error) is the top-label one with equal-width
confidence bins: samples are binned by their largest probability, and ECE is the
sample-weighted mean over bins of |accuracy - mean confidence| (0 = a probability of
0.8 is right 80% of the time). NLL is the mean negative log-probability of the true class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def p_risky(level_probs: np.ndarray) -> np.ndarray:
    """Probability that a sample is risky: 1 - P(level 0)."""
    return 1.0 - np.asarray(level_probs, dtype=np.float64)[:, 0]


ECE_BINS = 15  # equal-width bins over [0, 1], as in Guo et al. (2017)


def reliability_bins(probs: ArrayLike, labels: ArrayLike, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Reliability-diagram data for top-label confidence: per equal-width bin, the sample count,
    mean confidence and accuracy (NaN for empty bins), and the bin edges."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"expected (N, C) probabilities and N labels, got {p.shape} and {y.shape}")
    return _bins(p.max(1), (p.argmax(1) == y).astype(np.float64), n_bins)


def _bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds confidences in (edges[b], edges[b+1]]; a confidence of exactly 0 goes to the first bin
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": accuracy}


def _ece(bins: dict[str, np.ndarray]) -> float:
    filled = bins["count"] > 0
    if not filled.any():
        raise ValueError("no samples to score")
    gap = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float((bins["count"][filled] * gap).sum() / bins["count"].sum())


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE with ``n_bins`` equal-width bins (see the module docstring)."""
    return _ece(reliability_bins(probs, labels, n_bins))


def ece_noise_floor(probs: ArrayLike, n_bins: int = ECE_BINS, draws: int = 200, seed: int = 0) -> float:
    """The mean ECE a perfectly calibrated head with these confidences would show on this many items.

    Each draw marks every item right with probability equal to its confidence (what calibration
    means for top-label confidence). On a few hundred items ECE is biased upward by the sampling
    noise of each bin's accuracy; an ECE near this floor is as calibrated as the items can show.
    """
    confidence = np.asarray(probs, dtype=np.float64).max(1)
    rng = np.random.default_rng(seed)
    draws_right = rng.random((draws, len(confidence))) < confidence
    return float(np.mean([_ece(_bins(confidence, right.astype(np.float64), n_bins)) for right in draws_right]))


def negative_log_likelihood(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean -log p(true class); probabilities are floored at 1e-12 so a confident miss stays finite."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())


def head_metrics(
    true_levels: ArrayLike,
    true_types: ArrayLike,
    level_probs: ArrayLike,
    type_probs: ArrayLike,
    type_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Level and type accuracy / macro-F1, risky-vs-safe AUROC, level and type ECE, and per-type recall.

    Macro-F1 averages over the classes present in the true labels (absent classes would
    only add zeros). AUROC is NaN when the true labels hold only one side (all safe or all
    risky). Per-type recall is reported for each type present, as ``recall/<name>``.
    """
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    levels = np.asarray(true_levels, dtype=np.int64)
    types = np.asarray(true_types, dtype=np.int64)
    lp = np.asarray(level_probs, dtype=np.float64)
    tp = np.asarray(type_probs, dtype=np.float64)
    if not (len(levels) == len(types) == len(lp) == len(tp)):
        raise ValueError("labels and probabilities must have one row per sample")
    if len(levels) == 0:
        raise ValueError("no samples to score")
    level_pred = lp.argmax(1)
    type_pred = tp.argmax(1)
    level_classes = np.unique(levels)
    type_classes = np.unique(types)
    out = {
        "n": float(len(levels)),
        "level_accuracy": float(accuracy_score(levels, level_pred)),
        "level_macro_f1": float(f1_score(levels, level_pred, labels=level_classes, average="macro", zero_division=0)),
        "type_accuracy": float(accuracy_score(types, type_pred)),
        "type_macro_f1": float(f1_score(types, type_pred, labels=type_classes, average="macro", zero_division=0)),
    }
    out["level_ece"] = expected_calibration_error(lp, levels)
    out["type_ece"] = expected_calibration_error(tp, types)
    risky = levels > 0
    out["risk_auroc"] = float(roc_auc_score(risky, p_risky(lp))) if 0 < risky.sum() < len(risky) else float("nan")
    for t in type_classes:
        name = type_names[t] if type_names is not None else str(t)
        out[f"recall/{name}"] = float((type_pred[types == t] == t).mean())
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    """One line: the headline numbers first, per-type recall after."""
    main = ["level_accuracy", "level_macro_f1", "type_accuracy", "type_macro_f1", "risk_auroc", "level_ece", "type_ece"]
    parts = [f"{k}={metrics[k]:.3f}" for k in main if k in metrics]
    parts += [f"{k}={v:.2f}" for k, v in metrics.items() if k.startswith("recall/")]
    return " ".join(parts)
