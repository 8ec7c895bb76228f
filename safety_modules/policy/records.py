"""What a decision reports: the `SafetyDecision` record, with its names and texts (hints, refusals)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..taxonomy import Taxonomy
from .rule import ACTIONS, HINT, REFUSE, RULES

if TYPE_CHECKING:  # annotations only: the records themselves need no torch
    import torch


@dataclass
class SafetyDecision:
    """What the gate decided for one sample, and why. ``to_dict()`` gives a JSON-ready dict."""

    level_probs: dict[str, float]
    type_probs: dict[str, float]
    level: str | None  # None only when scoring failed
    type: str | None
    action: str  # allow | hint | refuse
    rule: str
    policy: str
    hint: str | None = None  # hint text (for refuse: the top-level hint, used by refusal="generate")
    refusal: str | None = None  # the answer given instead of generating, for refuse
    scoring_failed: bool = False
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # JSON has no NaN: a failed score is reported as null.
        for key in ("level_probs", "type_probs"):
            data[key] = {k: (v if math.isfinite(v) else None) for k, v in data[key].items()}
        return data


class DecisionTexts:
    """A policy's texts, and the records built with them from the rule's index tensors."""

    def __init__(
        self,
        policy: str,
        taxonomy: Taxonomy,
        hints: dict[str, dict[str, str]],
        refusals: dict[str, str],
        labels: dict[str, str],
        scoring_failure_refusal: str,
    ) -> None:
        self.policy = policy
        self.taxonomy = taxonomy
        self.hints = hints
        self.refusals = refusals
        self.labels = labels
        self.scoring_failure_refusal = scoring_failure_refusal

    def hint_text(self, level: str, type_: str) -> str:
        """The hint for a (risk level, risk type) pair, with the type's label filled in."""
        return self.hints[level][type_].format(type=self.labels[type_])

    def refusal_text(self, type_: str) -> str:
        """The refusal for a risk type, with its label filled in."""
        return self.refusals[type_].format(type=self.labels[type_])

    def record(
        self, lp: torch.Tensor, tp: torch.Tensor, action: int, rule: int, level: int, type_: int
    ) -> SafetyDecision:
        """One sample's record from its probabilities and the rule's indices."""
        levels, types = self.taxonomy.levels, self.taxonomy.types
        level_probs = dict(zip(levels, map(float, lp)))
        type_probs = dict(zip(types, map(float, tp)))
        if RULES[rule] == "scoring_failed":
            return self.failed(level_probs, type_probs, action, "non-finite safety probabilities")
        level_name, type_name = levels[level], types[type_]
        hint = refusal = None
        if action == HINT:
            hint = self.hint_text(level_name, type_name)
        elif action == REFUSE:
            hint = self.hint_text(levels[-1], type_name)
            refusal = self.refusal_text(type_name)
        return SafetyDecision(
            level_probs=level_probs,
            type_probs=type_probs,
            level=level_name,
            type=type_name,
            action=ACTIONS[action],
            rule=RULES[rule],
            policy=self.policy,
            hint=hint,
            refusal=refusal,
        )

    def failed(
        self, level_probs: dict[str, float], type_probs: dict[str, float], action: int, error: str
    ) -> SafetyDecision:
        """The record of a sample whose scoring failed (``action``: what ``fail_closed`` says)."""
        refusal = self.scoring_failure_refusal if action == REFUSE else None
        return SafetyDecision(
            level_probs=level_probs,
            type_probs=type_probs,
            level=None,
            type=None,
            action=ACTIONS[action],
            rule="scoring_failed",
            policy=self.policy,
            refusal=refusal,
            scoring_failed=True,
            error=error,
        )
