"""`SafetyPolicy`: turns the safety head's level and type probabilities into allow / hint / refuse.

The rule is documented on `SafetyPolicy` (and in docs/user_guide.md, "The gate / policies"); its
maths is in `rule`, the YAML spec in `spec`, the decision records and texts in `records`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..taxonomy import Taxonomy
from .records import DecisionTexts, SafetyDecision
from .rule import ALLOW, REFUSE, DecisionRule, as_matrix
from .spec import PolicyError, PolicySpec, TypeRule, read_policy_file, resolve_spec


class SafetyPolicy:
    """A gate policy: mode, per-type rules, texts. Build with `default`, `argmax`, `allow_all`,
    `from_yaml` or `from_dict` (a user dict/file is laid over the shipped default).

    Notation, for one sample: ``p[l]`` is the probability of risk level ``l`` (level 0 is
    the safe level, level ``L-1`` the most severe, "reject" in the default taxonomy) and
    ``q[t]`` the probability of risk type ``t``. The safe type is never a risk type.

    ``mode: thresholds`` (the default). For every risk type ``t`` two scores are formed,
    reading the two heads as independent:

    - ``p_risky_type[t]  = q[t] * (1 - p[0])``  probability that the sample is risky and of type ``t``
    - ``p_severe_type[t] = q[t] * p[L-1]``      probability that it is of type ``t`` at the top level

    With the per-type thresholds ``hint[t]`` and ``refuse[t]`` (``null`` = never):

    1. **refuse** if some enabled type has ``p_severe_type[t] >= refuse[t]``; the reported type is
       the one with the largest ``p_severe_type[t]`` among them, the level is ``L-1``.
    2. otherwise **hint** if some enabled type has ``p_risky_type[t] >= hint[t]``; the reported type
       is the one with the largest ``p_risky_type[t]`` among them and the hint is the one for
       (``argmax over l >= 1 of p[l]``, that type).
    3. otherwise **allow**. The rule is ``type_disabled`` when a disabled type crossed one
       of its thresholds (that type is reported), else ``below_thresholds``; level and type
       are then the argmax ones.

    ``mode: argmax`` reproduces the reference: ``level = argmax p``, ``type = argmax q``
    (first index on ties); allow when ``level == 0`` (rule ``argmax_safe_level``) or the
    type is the safe type (``argmax_safe_type``) or disabled (``type_disabled``); otherwise
    hint with the text for (level, type) (``argmax_hint``). It never refuses.

    ``mode: allow_all`` always allows (rule ``allow_all``).

    A scoring failure (non-finite probabilities, or an error raised while scoring) gives
    rule ``scoring_failed``: **refuse** with ``fail_closed: true``, **allow** with ``false``;
    the record has ``scoring_failed=True`` either way.
    """

    def __init__(
        self,
        *,
        name: str,
        mode: str,
        fail_closed: bool,
        taxonomy: Taxonomy,
        rules: dict[str, TypeRule],
        hints: dict[str, dict[str, str]],
        refusals: dict[str, str],
        labels: dict[str, str],
        hint_prefix: str,
        scoring_failure_refusal: str,
    ) -> None:
        self.name = name
        self.mode = mode
        self.fail_closed = fail_closed
        self.taxonomy = taxonomy
        self.rules = rules
        self.hints = hints
        self.refusals = refusals
        self.labels = labels
        self.hint_prefix = hint_prefix
        self.scoring_failure_refusal = scoring_failure_refusal
        self._rule = DecisionRule(mode, fail_closed, taxonomy, rules)
        self._texts = DecisionTexts(name, taxonomy, hints, refusals, labels, scoring_failure_refusal)

    def __repr__(self) -> str:
        return f"SafetyPolicy(name={self.name!r}, mode={self.mode!r}, fail_closed={self.fail_closed})"

    # ------------------------------------------------------------------ construction

    def with_refusals(self, refusals: dict[str, str]) -> SafetyPolicy:
        """The same policy with other refusal texts (a new object; this one is not changed)."""
        return SafetyPolicy(
            name=self.name,
            mode=self.mode,
            fail_closed=self.fail_closed,
            taxonomy=self.taxonomy,
            rules=self.rules,
            hints=self.hints,
            refusals=refusals,
            labels=self.labels,
            hint_prefix=self.hint_prefix,
            scoring_failure_refusal=self.scoring_failure_refusal,
        )

    @classmethod
    def from_dict(
        cls, data: dict[str, Any] | None = None, taxonomy: Taxonomy | None = None, source: str = "policy"
    ) -> SafetyPolicy:
        """The shipped default with ``data`` laid over it (``data`` is validated strictly)."""
        taxonomy = taxonomy or Taxonomy()
        return cls.from_spec(resolve_spec(data, taxonomy, source), taxonomy)

    @classmethod
    def from_yaml(cls, path: str | Path, taxonomy: Taxonomy | None = None) -> SafetyPolicy:
        """Load a user policy file; anything it does not set comes from the shipped default."""
        return cls.from_dict(read_policy_file(path), taxonomy, source=str(path))

    @classmethod
    def from_spec(cls, spec: PolicySpec, taxonomy: Taxonomy) -> SafetyPolicy:
        """A policy from a resolved `PolicySpec` (see `spec.resolve_spec`)."""
        return cls(
            name=spec.name,
            mode=spec.mode,
            fail_closed=spec.fail_closed,
            taxonomy=taxonomy,
            rules=spec.rules,
            hints=spec.hints,
            refusals=spec.refusals,
            labels=spec.labels,
            hint_prefix=spec.hint_prefix,
            scoring_failure_refusal=spec.scoring_failure_refusal,
        )

    @classmethod
    def default(cls, taxonomy: Taxonomy | None = None) -> SafetyPolicy:
        """The shipped policy: thresholds mode, hint and refuse at 0.5 for every type, fail closed."""
        return cls.from_dict({}, taxonomy, source="default policy")

    @classmethod
    def argmax(cls, taxonomy: Taxonomy | None = None) -> SafetyPolicy:
        """The reference's rule: argmax level and type, the hint for that pair, never refuse."""
        return cls.from_dict({"name": "argmax", "mode": "argmax"}, taxonomy, source="argmax policy")

    @classmethod
    def allow_all(cls, taxonomy: Taxonomy | None = None) -> SafetyPolicy:
        """Never intervene (scores are still recorded); a scoring failure lets the request through."""
        return cls.from_dict(
            {"name": "allow_all", "mode": "allow_all", "fail_closed": False}, taxonomy, source="allow_all policy"
        )

    @classmethod
    def load(cls, spec: str | Path | None, taxonomy: Taxonomy | None = None) -> SafetyPolicy:
        """The policy a ``--policy`` argument names, over ``taxonomy`` (the model's): ``default`` (also for
        ``None``), ``argmax``, ``allow-all`` (alias ``none``: the gate never acts) or a YAML file.
        The one reader of that argument for every command (generate, eval, scan, serve)."""
        named = {"default": cls.default, "argmax": cls.argmax, "allow-all": cls.allow_all, "none": cls.allow_all}
        if spec is None or str(spec) in named:
            return named[str(spec or "default")](taxonomy)
        if not Path(spec).is_file():
            raise FileNotFoundError(f"policy must be default, argmax, allow-all, none or a YAML file; {spec} not found")
        return cls.from_yaml(spec, taxonomy)

    # ------------------------------------------------------------------ decisions

    def decide(self, level_probs: Any, type_probs: Any) -> SafetyDecision:
        """The decision for one sample (1-D tensors, arrays or sequences of floats)."""
        lp = as_matrix(level_probs, len(self.taxonomy.levels), "level_probs", single=True)
        tp = as_matrix(type_probs, len(self.taxonomy.types), "type_probs", single=True)
        return self.decide_batch(lp, tp)[0]

    def decide_batch(self, level_probs: Any, type_probs: Any) -> list[SafetyDecision]:
        """One decision per row of (B, L) level and (B, T) type probabilities."""
        lp = as_matrix(level_probs, len(self.taxonomy.levels), "level_probs")
        tp = as_matrix(type_probs, len(self.taxonomy.types), "type_probs")
        action, rule, level, type_ = self._rule.evaluate(lp, tp)
        return [
            self._texts.record(lp[i], tp[i], int(action[i]), int(rule[i]), int(level[i]), int(type_[i]))
            for i in range(lp.shape[0])
        ]

    def flagged(self, level_probs: Any, type_probs: Any) -> bool:
        """True when the decision for one sample is not ``allow``."""
        return self.decide(level_probs, type_probs).action != "allow"

    def flag_batch(self, level_probs: Any, type_probs: Any) -> torch.Tensor | np.ndarray:
        """Vectorised `flagged` over (B, L) and (B, T) probabilities: a bool tensor (B,),
        or a numpy array when the level probabilities were given as one."""
        lp = as_matrix(level_probs, len(self.taxonomy.levels), "level_probs")
        tp = as_matrix(type_probs, len(self.taxonomy.types), "type_probs")
        flags = self._rule.evaluate(lp, tp)[0] != ALLOW
        return flags.numpy() if isinstance(level_probs, np.ndarray) else flags

    def prompt_hint(self, decision: SafetyDecision, generate_refused: bool = False) -> str | None:
        """The text added to the user's turn for ``decision``: the hint prefix + hint for ``hint``
        decisions (and for ``refuse`` ones when refused requests are generated, the reference's
        behaviour); ``None`` when nothing is added. The gate and the server's proxy mode both use it."""
        if decision.hint is None or not (
            decision.action == "hint" or (generate_refused and decision.action == "refuse")
        ):
            return None
        return self.hint_prefix + decision.hint

    def on_scoring_error(self, error: str) -> SafetyDecision:
        """The decision when scoring raised instead of returning probabilities."""
        return self._texts.failed({}, {}, REFUSE if self.fail_closed else ALLOW, error)

    def check_taxonomy(self, taxonomy: Taxonomy) -> None:
        """Raise unless this policy was built for ``taxonomy`` (same level and type names)."""
        if (taxonomy.levels, taxonomy.types) != (self.taxonomy.levels, self.taxonomy.types):
            raise PolicyError(
                f"policy {self.name!r} was built for levels {list(self.taxonomy.levels)} and types "
                f"{list(self.taxonomy.types)}, the model has {list(taxonomy.levels)} and {list(taxonomy.types)}"
            )

    def hint_text(self, level: str, type_: str) -> str:
        """The hint for a (risk level, risk type) pair, with the type's label filled in."""
        return self._texts.hint_text(level, type_)
