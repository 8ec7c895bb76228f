"""The decision maths: level and type probabilities -> (action, rule, level, type), vectorised over a batch.

The rule itself is documented on `SafetyPolicy`. Everything here works on index tensors;
names and texts are added by `SafetyPolicy` when it builds the records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..taxonomy import Taxonomy

ACTIONS: tuple[str, ...] = ("allow", "hint", "refuse")
MODES: tuple[str, ...] = ("thresholds", "argmax", "allow_all")
RULES: tuple[str, ...] = (
    "allow_all",
    "argmax_safe_level",
    "argmax_safe_type",
    "argmax_hint",
    "type_disabled",
    "below_thresholds",
    "hint_threshold",
    "refuse_threshold",
    "scoring_failed",
)
ALLOW, HINT, REFUSE = range(3)
RULE_ID = {name: i for i, name in enumerate(RULES)}


class DecisionRule:
    """One policy's rule as tensors: which types are risks and acted on, and their thresholds.

    ``rules`` maps each risk type to an object with ``enabled``, ``hint`` and ``refuse``
    (a `TypeRule`); a threshold of ``None`` never fires.
    """

    def __init__(self, mode: str, fail_closed: bool, taxonomy: Taxonomy, rules: Mapping[str, Any]) -> None:
        self.mode = mode
        self.fail_closed = fail_closed
        types = taxonomy.types
        risky = [t != taxonomy.safe_type for t in types]
        never = math.inf  # a threshold that no probability reaches
        self.risky = torch.tensor(risky)
        self.enabled = torch.tensor([r and rules[t].enabled for t, r in zip(types, risky)])
        self.hint_at = torch.tensor([_threshold(rules[t].hint) if r else never for t, r in zip(types, risky)])
        self.refuse_at = torch.tensor([_threshold(rules[t].refuse) if r else never for t, r in zip(types, risky)])

    def evaluate(self, lp: torch.Tensor, tp: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(action, rule, level, type) index tensors of shape (B,) for (B, L) and (B, T) probabilities;
        level and type are -1 where scoring failed (non-finite probabilities)."""
        batch = lp.shape[0]
        failed = ~(torch.isfinite(lp).all(1) & torch.isfinite(tp).all(1))
        lp = torch.nan_to_num(lp, nan=0.0, posinf=0.0, neginf=0.0)
        tp = torch.nan_to_num(tp, nan=0.0, posinf=0.0, neginf=0.0)
        top_level, top_type = lp.argmax(1), tp.argmax(1)
        action = torch.full((batch,), ALLOW)
        level, type_ = top_level.clone(), top_type.clone()
        if self.mode == "allow_all":
            rule = torch.full((batch,), RULE_ID["allow_all"])
        elif self.mode == "argmax":
            safe_level = top_level == 0
            safe_type = ~self.risky[top_type]
            disabled = ~self.enabled[top_type]
            rule = torch.full((batch,), RULE_ID["argmax_hint"])
            rule[disabled] = RULE_ID["type_disabled"]
            rule[safe_type] = RULE_ID["argmax_safe_type"]
            rule[safe_level] = RULE_ID["argmax_safe_level"]
            action[rule == RULE_ID["argmax_hint"]] = HINT
        else:
            p_risky_type, p_severe_type = threshold_scores(lp, tp)
            refuse_hit = p_severe_type >= self.refuse_at
            hint_hit = p_risky_type >= self.hint_at
            fire_refuse = refuse_hit & self.enabled
            fire_hint = hint_hit & self.enabled
            muted = (refuse_hit | hint_hit) & self.risky & ~self.enabled
            rule = torch.full((batch,), RULE_ID["below_thresholds"])
            is_muted = muted.any(1)
            rule[is_muted] = RULE_ID["type_disabled"]
            type_[is_muted] = _masked_argmax(p_risky_type, muted)[is_muted]
            is_hint = fire_hint.any(1)
            rule[is_hint] = RULE_ID["hint_threshold"]
            action[is_hint] = HINT
            type_[is_hint] = _masked_argmax(p_risky_type, fire_hint)[is_hint]
            level[is_hint] = 1 + lp[:, 1:].argmax(1)[is_hint]
            is_refuse = fire_refuse.any(1)
            rule[is_refuse] = RULE_ID["refuse_threshold"]
            action[is_refuse] = REFUSE
            type_[is_refuse] = _masked_argmax(p_severe_type, fire_refuse)[is_refuse]
            level[is_refuse] = lp.shape[1] - 1
        rule[failed] = RULE_ID["scoring_failed"]
        action[failed] = REFUSE if self.fail_closed else ALLOW
        level[failed] = -1
        type_[failed] = -1
        return action, rule, level, type_


def threshold_scores(level_probs: torch.Tensor, type_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-type scores that ``mode: thresholds`` compares with its thresholds, (B, T) each:
    ``p_risky_type[t] = q[t] * (1 - p[0])`` (hint) and ``p_severe_type[t] = q[t] * p[L-1]`` (refuse).
    `safevlm calibrate` chooses thresholds on exactly these scores."""
    return type_probs * (1.0 - level_probs[:, :1]), type_probs * level_probs[:, -1:]


def as_matrix(values: Any, width: int, what: str, single: bool = False) -> torch.Tensor:
    """Probabilities as a float32 CPU tensor (B, width); a 1-D input is one row."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach().to("cpu", torch.float32)
    else:
        tensor = torch.as_tensor(np.asarray(values, dtype=np.float32))
    if single and tensor.dim() != 1:
        raise ValueError(f"{what}: expected one sample (1-D), got shape {tuple(tensor.shape)}")
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2 or tensor.shape[1] != width:
        raise ValueError(f"{what}: expected shape (B, {width}), got {tuple(tensor.shape)}")
    return tensor


def _threshold(value: float | None) -> float:
    return math.inf if value is None else float(value)


def _masked_argmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(~mask, -1.0).argmax(1)
