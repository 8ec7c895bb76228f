"""Calibration maths: temperature scaling of the head's logits, and policy thresholds chosen from data.

Temperatures. For each head (level, type) one temperature ``T`` is fitted on validation
logits by minimising the negative log-likelihood of ``softmax(logits / T)`` (LBFGS on
``log T``, Guo et al. 2017). Vector scaling (one temperature per class) is fitted too and
kept only when its cross-validated NLL on the validation set beats the single temperature,
since on the data it was fitted on more parameters always look better.

Thresholds. The policy (``mode: thresholds``) compares per-type scores with per-type
thresholds; the scores are `safety_modules.policy.rule.threshold_scores` (``risk`` for hint,
``severe`` for refuse), used here as they are. For a target the thresholds are the least
strict that meet it on the validation items:

- ``recall=R``: hint thresholds such that the policy acts (hints or refuses) on at least R of
  the risky items; refuse thresholds such that it refuses at least R of the top-level items.
- ``max_over_refusal=B``: refuse thresholds such that at most B of the safe items are refused
  (hint thresholds still follow the recall target).

With ``per_type`` every risk type gets its own pair (a type without validation items keeps
the shared value, and says so); otherwise one pair in ``defaults``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

from .policy import SafetyPolicy
from .policy.rule import threshold_scores
from .taxonomy import Taxonomy

LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))  # temperatures are kept in [0.01, 100]
CV_FOLDS = 5
MIN_ITEMS_FOR_VECTOR = 20  # fewer validation items than this: a single temperature only


# ---------------------------------------------------------------------- temperatures


def nll_at(logits: np.ndarray, labels: ArrayLike, temperature: float | Sequence[float]) -> float:
    """Mean NLL of ``softmax(logits / temperature)`` on ``labels``."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    t = torch.as_tensor(temperature, dtype=torch.float64)
    return float(F.cross_entropy(z / t, torch.as_tensor(np.asarray(labels), dtype=torch.long)))


def fit_temperature(logits: np.ndarray, labels: ArrayLike, per_class: bool = False) -> float | list[float]:
    """The temperature(s) minimising the NLL of ``softmax(logits / T)``: one number, or one per class (see
    `fit_temperatures`)."""
    temperatures = fit_temperatures(logits, labels, per_class)
    return temperatures.tolist() if per_class else float(temperatures[0])


def fit_temperatures(logits: np.ndarray, labels: ArrayLike, per_class: bool = False) -> torch.Tensor:
    """The temperature(s) minimising the NLL of ``softmax(logits / T)`` as a float64 tensor: (1,) or (C,).

    Per class, a class with no item among ``labels`` keeps the single temperature: nothing in the
    data pins its own, and a free one runs to a bound (a tiny T would let that class win whenever
    its logit turns positive).
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"expected (N, C) logits and N labels (N > 0), got {tuple(z.shape)} and {len(y)}")
    low, high = LOG_T_BOUNDS
    fixed = torch.zeros(1, dtype=torch.float64)
    free = torch.ones(1, dtype=torch.bool)
    if per_class:
        fixed = torch.full((z.shape[1],), math.log(float(fit_temperatures(logits, labels)[0])), dtype=torch.float64)
        free = torch.bincount(y, minlength=z.shape[1]) > 0
    log_t = fixed.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def current() -> torch.Tensor:
        return torch.where(free, log_t, fixed).clamp(low, high)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / current().exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return current().detach().exp()


def cross_validated_nll(
    logits: np.ndarray, labels: ArrayLike, per_class: bool, folds: int = CV_FOLDS, seed: int = 0
) -> float:
    """Mean NLL of each item under temperatures fitted without its fold (seeded folds)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    total = 0.0
    for part in np.array_split(order, folds):
        rest = np.setdiff1d(order, part)
        temperature = fit_temperature(logits[rest], labels[rest], per_class)
        total += nll_at(logits[part], labels[part], temperature) * len(part)
    return total / len(labels)


@dataclass
class TemperatureFit:
    """The temperature chosen for one head, and the evidence for the choice."""

    temperature: float | list[float]
    kind: str  # "scalar" or "vector"
    scalar: float
    vector: list[float] | None = None
    cv_nll_scalar: float | None = None
    cv_nll_vector: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fit_head_temperature(logits: np.ndarray, labels: ArrayLike) -> TemperatureFit:
    """A single temperature, replaced by one per class only when that wins under cross-validation."""
    labels = np.asarray(labels)
    scalar = float(fit_temperatures(logits, labels)[0])
    note = (
        "the temperature is at its bound (the validation set may be separable or degenerate)"
        if _at_bound([scalar])
        else ""
    )
    if len(labels) < MIN_ITEMS_FOR_VECTOR:
        return TemperatureFit(
            scalar, "scalar", scalar, note=note or f"vector scaling not tried: {len(labels)} validation items"
        )
    cv_scalar = cross_validated_nll(logits, labels, per_class=False)
    cv_vector = cross_validated_nll(logits, labels, per_class=True)
    vector = fit_temperatures(logits, labels, per_class=True).tolist()
    if cv_vector < cv_scalar:
        note = note or ("a per-class temperature is at its bound" if _at_bound(vector) else "")
        return TemperatureFit(vector, "vector", scalar, vector, cv_scalar, cv_vector, note)
    return TemperatureFit(scalar, "scalar", scalar, vector, cv_scalar, cv_vector, note)


def _at_bound(temperatures: Sequence[float]) -> bool:
    low, high = (math.exp(b) for b in LOG_T_BOUNDS)
    return any(not low * 1.001 < t < high * 0.999 for t in temperatures)


# ---------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Target:
    """What the thresholds must achieve on validation: a recall, and optionally an over-refusal budget."""

    recall: float = 0.95
    max_over_refusal: float | None = None

    def describe(self) -> str:
        refuse = (
            f"at most {self.max_over_refusal:.1%} of safe items refused"
            if self.max_over_refusal is not None
            else f"top-level recall >= {self.recall:.0%} (refuse)"
        )
        return f"risky recall >= {self.recall:.0%} (hint or refuse); {refuse}"


def parse_target(text: str) -> float:
    """``recall=0.95`` -> 0.95 (the only target form; see also ``max_over_refusal``)."""
    key, sep, value = text.partition("=")
    if key.strip() != "recall" or not sep:
        raise ValueError(f"--target must look like recall=0.95, got {text!r}")
    try:
        recall = float(value)
    except ValueError:
        raise ValueError(f"--target recall must be a number, got {value!r}") from None
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"--target recall must be in (0, 1], got {recall}")
    return recall


@dataclass
class ThresholdChoice:
    """Chosen thresholds per risk type (inf = never, None = no data: the shipped default) and the policy dict."""

    hint: dict[str, float | None]
    refuse: dict[str, float | None]
    policy: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _just_above(value: float) -> float:
    """The smallest float32 above ``value`` (a threshold no item at ``value`` reaches); inf (never) above 1."""
    above = float(np.nextafter(np.float32(value), np.float32(np.inf)))
    return math.inf if above > 1.0 else above


def recall_threshold(scores: np.ndarray, recall: float) -> float | None:
    """The largest threshold that at least ``recall`` of ``scores`` reach (None without scores)."""
    if len(scores) == 0:
        return None
    need = max(1, math.ceil(recall * len(scores) - 1e-9))
    return float(np.sort(np.asarray(scores, dtype=np.float32))[::-1][need - 1])


def budget_thresholds(safe_scores: np.ndarray, budget: float) -> list[float | None]:
    """Thresholds, one per column of ``safe_scores`` (N safe items x K types), such that at most
    ``budget`` of the items reach any of them; the least strict such set in which every type lets
    the same number of safe items through. One column is the shared-threshold case. ``inf``:
    no threshold up to 1 keeps the budget (never act); None: no safe items to decide on."""
    n, width = safe_scores.shape
    if n == 0:
        return [None] * width
    allowed = math.floor(budget * n + 1e-9)
    ranked = -np.sort(-np.asarray(safe_scores, dtype=np.float32), axis=0)  # descending per column
    for k in range(min(allowed, n - 1), -1, -1):
        thresholds: list[float | None] = [_just_above(ranked[k, j]) for j in range(width)]
        reach = np.stack([safe_scores[:, j] >= t for j, t in enumerate(thresholds) if t is not None], 1)
        if reach.any(1).sum() <= allowed:
            return thresholds
    raise AssertionError("unreachable: k = 0 lets no safe item through")


def choose_thresholds(
    level_probs: np.ndarray,
    type_probs: np.ndarray,
    gold_levels: ArrayLike,
    gold_types: ArrayLike,
    taxonomy: Taxonomy,
    target: Target,
    per_type: bool = False,
    name: str = "calibrated",
) -> ThresholdChoice:
    """Hint and refuse thresholds from validation probabilities for ``target`` (see the module docstring)."""
    risk, severe = (
        s.numpy()
        for s in threshold_scores(
            torch.as_tensor(np.asarray(level_probs, np.float32)), torch.as_tensor(np.asarray(type_probs, np.float32))
        )
    )
    levels, types = np.asarray(gold_levels), np.asarray(gold_types)
    risk_types = list(taxonomy.risk_types)
    cols = [taxonomy.types.index(t) for t in risk_types]
    risky, top, safe = levels > 0, levels == len(taxonomy.levels) - 1, levels == 0
    notes: list[str] = []

    # Shared thresholds: the policy acts when any type's score reaches the threshold, i.e. on the max.
    shared_hint = recall_threshold(risk[risky][:, cols].max(1), target.recall)
    if target.max_over_refusal is not None:
        shared_refuse = budget_thresholds(severe[safe][:, cols].max(1, keepdims=True), target.max_over_refusal)[0]
    else:
        shared_refuse = recall_threshold(severe[top][:, cols].max(1), target.recall)
    if shared_hint is None:
        notes.append("no risky validation items: the hint threshold is left at the shipped default")
    if shared_refuse is None:
        notes.append("no validation items to set the refuse threshold: left at the shipped default")
    hint: dict[str, float | None] = dict.fromkeys(risk_types, shared_hint)
    refuse: dict[str, float | None] = dict.fromkeys(risk_types, shared_refuse)
    if per_type:
        if target.max_over_refusal is not None:
            refuse = dict(zip(risk_types, budget_thresholds(severe[safe][:, cols], target.max_over_refusal)))
        for t, col in zip(risk_types, cols):
            own = types == col
            if (own & risky).any():
                hint[t] = recall_threshold(risk[own & risky, col], target.recall)
            else:
                notes.append(f"{t}: no risky validation items, shared hint threshold")
            if target.max_over_refusal is None:
                if (own & top).any():
                    refuse[t] = recall_threshold(severe[own & top, col], target.recall)
                else:
                    notes.append(f"{t}: no top-level validation items, shared refuse threshold")
    policy: dict[str, Any] = {"name": name, "mode": "thresholds"}
    if per_type:
        policy["types"] = {t: _rule(hint[t], refuse[t]) for t in risk_types}
    else:
        policy["defaults"] = _rule(shared_hint, shared_refuse)
    return ThresholdChoice(hint, refuse, policy, notes)


def _rule(hint: float | None, refuse: float | None) -> dict[str, float | None]:
    """A policy rule: ``inf`` (no threshold in [0, 1] works) becomes null = never; a threshold that no
    validation item could set (None) is left out, so the shipped default applies."""
    return {k: (None if v == math.inf else v) for k, v in (("hint", hint), ("refuse", refuse)) if v is not None}


# ---------------------------------------------------------------------- what a policy does on labelled data


def policy_metrics(
    policy: SafetyPolicy,
    level_probs: np.ndarray,
    type_probs: np.ndarray,
    gold_levels: ArrayLike,
    gold_types: ArrayLike,
) -> dict[str, Any]:
    """What ``policy`` does on labelled items: overall and per risk type recall, precision, over-refusal.

    recall: share of risky items acted on (hinted or refused); refuse_recall: share of top-level
    items refused; precision: share of acted-on items that are risky (per type: acted on with that
    type reported, and truly of that type); over_refusal: share of safe items refused (per type:
    refused with that type reported); safe_hinted: share of safe items hinted. None = no items.
    """
    tax = policy.taxonomy
    decisions = policy.decide_batch(np.asarray(level_probs, np.float32), np.asarray(type_probs, np.float32))
    action = np.array([d.action for d in decisions])
    reported = np.array([d.type or "" for d in decisions])
    levels = np.asarray(gold_levels)
    gold = np.array([tax.types[int(i)] for i in np.asarray(gold_types, dtype=np.int64)])
    acted, refused = action != "allow", action == "refuse"
    risky, top, safe = levels > 0, levels == len(tax.levels) - 1, levels == 0

    def share(hit: np.ndarray, among: np.ndarray) -> float | None:
        return float(hit[among].mean()) if among.any() else None

    out: dict[str, Any] = {
        "n": int(len(levels)),
        "n_risky": int(risky.sum()),
        "n_safe": int(safe.sum()),
        "n_top": int(top.sum()),
        "recall": share(acted, risky),
        "refuse_recall": share(refused, top),
        "precision": share(risky, acted),
        "over_refusal": share(refused, safe),
        "safe_hinted": share(action == "hint", safe),
        "types": {},
    }
    for t in tax.risk_types:
        own = risky & (gold == t)
        flagged_as = acted & (reported == t)
        out["types"][t] = {
            "n": int(own.sum()),
            "recall": share(acted, own),
            "refuse_recall": share(refused, top & (gold == t)),
            "precision": share(own, flagged_as),
            "over_refusal": share(refused & (reported == t), safe),
        }
    return out


def unmet_targets(metrics: dict[str, Any], target: Target, per_type: bool) -> list[str]:
    """The targets that `policy_metrics` on the validation items do not meet (empty when all are met).

    The thresholds are chosen to meet them on validation by construction; this check keeps that honest.
    """
    misses = []
    groups = [("all", metrics)] + (list(metrics["types"].items()) if per_type else [])
    for name, m in groups:
        if m["recall"] is not None and m["recall"] < target.recall:
            misses.append(f"{name}: recall {m['recall']:.3f} < {target.recall}")
        if target.max_over_refusal is None and m["refuse_recall"] is not None and m["refuse_recall"] < target.recall:
            misses.append(f"{name}: refuse recall {m['refuse_recall']:.3f} < {target.recall}")
    if (
        target.max_over_refusal is not None
        and metrics["over_refusal"] is not None
        and metrics["over_refusal"] > target.max_over_refusal + 1e-12
    ):
        misses.append(f"over-refusal {metrics['over_refusal']:.3f} > {target.max_over_refusal}")
    return misses
