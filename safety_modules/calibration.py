"""Calibration maths: temperature scaling of the head's logits, and policy thresholds chosen from data.

Temperatures. For each head (level, type) one temperature ``T`` is fitted on validation
logits by minimising the negative log-likelihood of ``softmax(logits / T)`` (LBFGS on
``log T``, Guo et al. 2017). A single temperature keeps every prediction and ranking and only
changes confidence; per-class temperatures are not fitted (see `fit_head_temperature`).

Thresholds. The policy (``mode: thresholds``) compares per-type scores with per-type
thresholds; the scores are `safety_modules.policy.rule.threshold_scores` (``p_risky_type`` for hint,
``p_severe_type`` for refuse), used here as they are. For a target the thresholds are the least
strict that meet it on the validation items:

- ``recall=R``: hint thresholds such that the policy acts (hints or refuses) on at least R of
  the risky items; refuse thresholds such that it refuses at least R of the top-level items.
- ``max_over_refusal=B``: refuse thresholds such that at most B of the safe items are refused
  (hint thresholds still follow the recall target).

With ``per_type`` every risk type gets its own pair (a type without validation items keeps
the shared value, and says so); otherwise one pair in ``defaults``.

Thresholds are never chosen from one class: the validation items must hold safe and risky
ones (`check_classes`), or nothing bounds the over-refusal (or the recall) they give. What the
chosen thresholds do on the data is measured (`policy_metrics`), and an over-refusal above a
bound is a warning (`over_refusal_warnings`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

from .errors import CalibrationError, ConfigError
from .policy import SafetyPolicy
from .policy.rule import threshold_scores
from .taxonomy import Taxonomy

LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))  # temperatures are kept in [0.01, 100]
GRAD_TOLERANCE = 1e-6  # |d NLL / d log T| at an interior optimum
OVER_REFUSAL_WARN = 0.10  # default bound above which the chosen thresholds' over-refusal is a warning


# ---------------------------------------------------------------------- temperatures


def nll_at(logits: np.ndarray, labels: ArrayLike, temperature: float) -> float:
    """Mean NLL of ``softmax(logits / temperature)`` on ``labels``."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return float(F.cross_entropy(z / temperature, torch.as_tensor(np.asarray(labels), dtype=torch.long)))


def fit_temperature(logits: np.ndarray, labels: ArrayLike) -> float:
    """The temperature ``T`` in [0.01, 100] minimising the mean NLL of ``softmax(logits / T)``.

    The NLL is convex in ``1 / T``, so it has one minimum over ``log T`` and LBFGS on ``log T``
    finds it (when every item is classified right, that minimum is at T -> 0: the lower bound).
    The result is checked (a zero gradient, or a bound the NLL still falls towards); an optimiser
    that stopped early raises instead of returning a wrong temperature.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"expected (N, C) logits and N labels (N > 0), got {tuple(z.shape)} and {len(y)}")
    if not bool(torch.isfinite(z).all()):
        bad = int((~torch.isfinite(z)).any(1).sum())
        raise CalibrationError(f"{bad} of {len(z)} items have non-finite logits (NaN or inf): no temperature fits them")
    low, high = LOG_T_BOUNDS
    if bool((z.argmax(1) == y).all()):  # separable: the NLL falls monotonically as T -> 0
        return math.exp(low)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def loss_at(value: torch.Tensor) -> torch.Tensor:
        # outside the bounds the NLL is flat (clamped); a quadratic pulls LBFGS back to the bound, never stuck
        clamped = value.clamp(low, high)
        return F.cross_entropy(z / clamped.exp(), y) + (value - clamped) ** 2

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_at(log_t)
        loss.backward()
        return loss

    for _ in range(5):  # LBFGS may stop on max_iter; restart from where it stopped
        optimizer.step(closure)
        if _converged(z, y, float(log_t.detach().clamp(low, high))):
            return math.exp(float(log_t.detach().clamp(low, high)))
    raise RuntimeError(f"temperature fit did not converge (log T = {float(log_t):.4f})")


def _converged(z: torch.Tensor, y: torch.Tensor, log_t: float) -> bool:
    """A zero gradient inside the bounds, or a bound the NLL still decreases towards."""
    point = torch.tensor(log_t, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(F.cross_entropy(z / point.exp(), y), point)
    low, high = LOG_T_BOUNDS
    return abs(float(grad)) < GRAD_TOLERANCE or (log_t <= low and grad > 0) or (log_t >= high and grad < 0)


@dataclass
class TemperatureFit:
    """The temperature fitted for one head, and the evidence on the items it was fitted on."""

    temperature: float
    nll_before: float  # on the fitting (validation) items, T = 1
    nll_after: float
    at_bound: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fit_head_temperature(logits: np.ndarray, labels: ArrayLike) -> TemperatureFit:
    """One temperature for a head, with its validation NLL before/after and a note on what it does.

    Only a single temperature is fitted: it keeps the argmax and the ranking of every class, so it
    changes confidence and nothing else. Dividing each class's logit by its own temperature is not
    a calibration map (it depends on the logits' arbitrary offset, can change the argmax, and on a
    few hundred items ran to its bounds: docs/calibration.md).
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    temperature = fit_temperature(logits, labels)
    low, high = (math.exp(b) for b in LOG_T_BOUNDS)
    at_bound = not low * 1.001 < temperature < high * 0.999
    if at_bound:
        note = (
            f"WARNING: the temperature is at its bound {temperature:.3g}: the validation items are separable "
            "or degenerate for this head (too few, or all classified right); do not trust it"
        )
    elif abs(math.log(temperature)) < 0.05:
        note = "T within 5% of 1: the head was about as confident as it was right on validation (little change)"
    elif temperature > 1:
        note = "T > 1: the head was overconfident on validation (probabilities softened)"
    else:
        note = "T < 1: the head was underconfident on validation (probabilities sharpened)"
    return TemperatureFit(temperature, nll_at(logits, labels, 1.0), nll_at(logits, labels, temperature), at_bound, note)


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
        raise ConfigError(f"--target must look like recall=0.95, got {text!r}")
    try:
        recall = float(value)
    except ValueError:
        raise ConfigError(f"--target recall must be a number, got {value!r}") from None
    if not 0.0 < recall <= 1.0:  # also refuses nan
        raise ConfigError(f"--target recall must be in (0, 1], got {recall}")
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


def check_classes(gold_levels: ArrayLike, what: str = "the validation items") -> None:
    """Refuse to choose thresholds from one class: without safe items nothing bounds the over-refusal
    (a risky-only set gives thresholds near 0 that refuse most safe inputs), without risky ones nothing
    bounds the recall."""
    levels = np.asarray(gold_levels)
    safe, risky = int((levels == 0).sum()), int((levels > 0).sum())
    if not safe or not risky:
        missing = "safe (level 0)" if not safe else "risky (level > 0)"
        raise CalibrationError(
            f"{what} hold {risky} risky and {safe} safe items: thresholds need both classes; "
            f"add {missing} items (a folder of safe images counts as safe)"
        )


def over_refusal_warnings(metrics: dict[str, Any], bound: float, split: str = "validation") -> list[str]:
    """One warning per group (all items, then each risk type) whose over-refusal in `policy_metrics` exceeds
    ``bound``; empty when none does."""
    groups = [("all types", metrics)] + list(metrics["types"].items())
    return [
        f"on {split}, the chosen thresholds refuse {m['over_refusal']:.1%} of safe items ({name}), "
        f"more than {bound:.1%}; set --max-over-refusal to bound it (recall {fmt_share(m.get('recall'))})"
        for name, m in groups
        if m["over_refusal"] is not None and m["over_refusal"] > bound
    ]


def fmt_share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


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
    """Hint and refuse thresholds from validation probabilities for ``target`` (see the module docstring);
    a `CalibrationError` when the items lack safe or risky ones, or hold non-finite probabilities."""
    check_classes(gold_levels)
    for name, probs in (("level", level_probs), ("type", type_probs)):
        if not np.isfinite(np.asarray(probs, np.float64)).all():
            raise CalibrationError(f"non-finite {name} probabilities: thresholds cannot be chosen from NaN or inf")
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
