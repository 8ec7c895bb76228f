"""`SafetyPolicy`: turns the safety head's level and type probabilities into allow / hint / refuse.

The rule is documented on `SafetyPolicy` (and in docs/user_guide.md, "The gate / policies").
Texts come from YAML: the shipped ``policies/default.yaml`` plus, optionally, a user
file that overrides any subset of it (unknown keys, levels or types are an error
that names them).
"""
from __future__ import annotations

import copy
import math
import string
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .taxonomy import Taxonomy

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
_ALLOW, _HINT, _REFUSE = range(3)
_RULE = {name: i for i, name in enumerate(RULES)}

WILDCARD = "*"  # a text for any type that has none of its own
_TOP_KEYS = {"name", "mode", "fail_closed", "hint_prefix", "defaults", "types", "labels", "hints", "refusals",
             "scoring_failure_refusal"}
_RULE_KEYS = {"enabled", "hint", "refuse"}


class PolicyError(ValueError):
    """A policy file or dict is invalid (unknown keys, levels or types, bad values)."""


@dataclass(frozen=True)
class TypeRule:
    """Per-type settings: whether the type is acted on, and its thresholds (``None`` = never)."""

    enabled: bool = True
    hint: float | None = 0.5
    refuse: float | None = 0.5


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


def _default_file() -> Path:
    return Path(str(resources.files("safety_modules") / "policies" / "default.yaml"))


class SafetyPolicy:
    """A gate policy: mode, per-type rules, texts. Build with `default`, `argmax`, `allow_all`,
    `from_yaml` or `from_dict` (a user dict/file is laid over the shipped default).

    Notation, for one sample: ``p[l]`` is the probability of risk level ``l`` (level 0 is
    the safe level, level ``L-1`` the most severe, "reject" in the default taxonomy) and
    ``q[t]`` the probability of risk type ``t``. The safe type is never a risk type.

    ``mode: thresholds`` (the default). For every risk type ``t`` two scores are formed,
    reading the two heads as independent:

    - ``risk[t]   = q[t] * (1 - p[0])``  probability that the sample is risky and of type ``t``
    - ``severe[t] = q[t] * p[L-1]``      probability that it is of type ``t`` at the top level

    With the per-type thresholds ``hint[t]`` and ``refuse[t]`` (``null`` = never):

    1. **refuse** if some enabled type has ``severe[t] >= refuse[t]``; the reported type is
       the one with the largest ``severe[t]`` among them, the level is ``L-1``.
    2. otherwise **hint** if some enabled type has ``risk[t] >= hint[t]``; the reported type
       is the one with the largest ``risk[t]`` among them and the hint is the one for
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
        types = taxonomy.types
        risky = [t != taxonomy.safe_type for t in types]
        never = math.inf  # a threshold that no probability reaches
        self._risky = torch.tensor(risky)
        self._enabled = torch.tensor([r and rules[t].enabled for t, r in zip(types, risky)])
        self._hint_at = torch.tensor([_threshold(rules[t].hint) if r else never for t, r in zip(types, risky)])
        self._refuse_at = torch.tensor([_threshold(rules[t].refuse) if r else never for t, r in zip(types, risky)])

    def __repr__(self) -> str:
        return f"SafetyPolicy(name={self.name!r}, mode={self.mode!r}, fail_closed={self.fail_closed})"

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None = None, taxonomy: Taxonomy | None = None,
                  source: str = "policy") -> "SafetyPolicy":
        """The shipped default with ``data`` laid over it (``data`` is validated strictly)."""
        taxonomy = taxonomy or Taxonomy()
        data = data or {}
        if not isinstance(data, dict):
            raise PolicyError(f"{source}: a policy must be a mapping, got {type(data).__name__}")
        _validate(data, taxonomy, source)
        shipped = yaml.safe_load(_default_file().read_text())
        merged = _merge(_restrict(shipped, taxonomy), data)
        return cls._build(merged, taxonomy, source)

    @classmethod
    def from_yaml(cls, path: str | Path, taxonomy: Taxonomy | None = None) -> "SafetyPolicy":
        """Load a user policy file; anything it does not set comes from the shipped default."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"policy file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise PolicyError(f"{path}: not valid YAML: {exc}") from None
        if isinstance(data, dict):
            data.setdefault("name", path.stem)
        return cls.from_dict(data, taxonomy, source=str(path))

    @classmethod
    def default(cls, taxonomy: Taxonomy | None = None) -> "SafetyPolicy":
        """The shipped policy: thresholds mode, hint and refuse at 0.5 for every type, fail closed."""
        return cls.from_dict({}, taxonomy, source="default policy")

    @classmethod
    def argmax(cls, taxonomy: Taxonomy | None = None) -> "SafetyPolicy":
        """The reference's rule: argmax level and type, the hint for that pair, never refuse."""
        return cls.from_dict({"name": "argmax", "mode": "argmax"}, taxonomy, source="argmax policy")

    @classmethod
    def allow_all(cls, taxonomy: Taxonomy | None = None) -> "SafetyPolicy":
        """Never intervene (scores are still recorded); a scoring failure lets the request through."""
        return cls.from_dict({"name": "allow_all", "mode": "allow_all", "fail_closed": False}, taxonomy,
                             source="allow_all policy")

    @classmethod
    def _build(cls, data: dict[str, Any], taxonomy: Taxonomy, source: str) -> "SafetyPolicy":
        risk_types = taxonomy.risk_types
        defaults = data["defaults"]
        rules = {t: TypeRule(**{**defaults, **data["types"].get(t, {})}) for t in risk_types}
        hints: dict[str, dict[str, str]] = {}
        missing = []
        for level in taxonomy.levels[1:]:
            texts = data["hints"].get(level, {})
            hints[level] = {}
            for t in risk_types:
                text = texts.get(t, texts.get(WILDCARD))
                if text is None:
                    missing.append(f"hints.{level}.{t}")
                else:
                    hints[level][t] = text
        refusals = {}
        for t in risk_types:
            text = data["refusals"].get(t, data["refusals"].get(WILDCARD))
            if text is None:
                missing.append(f"refusals.{t}")
            else:
                refusals[t] = text
        if missing:
            raise PolicyError(f"{source}: no text for {missing} (give one, or a '{WILDCARD}' fallback)")
        labels = {t: data["labels"].get(t, t.replace("_", " ")) for t in risk_types}
        return cls(name=str(data["name"]), mode=data["mode"], fail_closed=data["fail_closed"], taxonomy=taxonomy,
                   rules=rules, hints=hints, refusals=refusals, labels=labels, hint_prefix=data["hint_prefix"],
                   scoring_failure_refusal=data["scoring_failure_refusal"])

    # ------------------------------------------------------------------ decisions

    def decide(self, level_probs: Any, type_probs: Any) -> SafetyDecision:
        """The decision for one sample (1-D tensors, arrays or sequences of floats)."""
        lp = _as_matrix(level_probs, len(self.taxonomy.levels), "level_probs", single=True)
        tp = _as_matrix(type_probs, len(self.taxonomy.types), "type_probs", single=True)
        return self.decide_batch(lp, tp)[0]

    def decide_batch(self, level_probs: Any, type_probs: Any) -> list[SafetyDecision]:
        """One decision per row of (B, L) level and (B, T) type probabilities."""
        lp = _as_matrix(level_probs, len(self.taxonomy.levels), "level_probs")
        tp = _as_matrix(type_probs, len(self.taxonomy.types), "type_probs")
        action, rule, level, type_ = self._evaluate(lp, tp)
        return [self._record(lp[i], tp[i], int(action[i]), int(rule[i]), int(level[i]), int(type_[i]))
                for i in range(lp.shape[0])]

    def flagged(self, level_probs: Any, type_probs: Any) -> bool:
        """True when the decision for one sample is not ``allow``."""
        return self.decide(level_probs, type_probs).action != "allow"

    def flag_batch(self, level_probs: Any, type_probs: Any) -> torch.Tensor | np.ndarray:
        """Vectorised `flagged` over (B, L) and (B, T) probabilities: a bool tensor (B,),
        or a numpy array when the level probabilities were given as one."""
        lp = _as_matrix(level_probs, len(self.taxonomy.levels), "level_probs")
        tp = _as_matrix(type_probs, len(self.taxonomy.types), "type_probs")
        flags = self._evaluate(lp, tp)[0] != _ALLOW
        return flags.numpy() if isinstance(level_probs, np.ndarray) else flags

    def on_scoring_error(self, error: str) -> SafetyDecision:
        """The decision when scoring raised instead of returning probabilities."""
        action = _REFUSE if self.fail_closed else _ALLOW
        return self._failed_record({}, {}, action, error)

    def check_taxonomy(self, taxonomy: Taxonomy) -> None:
        """Raise unless this policy was built for ``taxonomy`` (same level and type names)."""
        if (taxonomy.levels, taxonomy.types) != (self.taxonomy.levels, self.taxonomy.types):
            raise PolicyError(
                f"policy {self.name!r} was built for levels {list(self.taxonomy.levels)} and types "
                f"{list(self.taxonomy.types)}, the model has {list(taxonomy.levels)} and {list(taxonomy.types)}"
            )

    def _evaluate(self, lp: torch.Tensor, tp: torch.Tensor):
        """Vectorised rule: (action, rule, level, type) index tensors of shape (B,); -1 = none."""
        batch = lp.shape[0]
        failed = ~(torch.isfinite(lp).all(1) & torch.isfinite(tp).all(1))
        lp = torch.nan_to_num(lp, nan=0.0, posinf=0.0, neginf=0.0)
        tp = torch.nan_to_num(tp, nan=0.0, posinf=0.0, neginf=0.0)
        top_level, top_type = lp.argmax(1), tp.argmax(1)
        action = torch.full((batch,), _ALLOW)
        level, type_ = top_level.clone(), top_type.clone()
        if self.mode == "allow_all":
            rule = torch.full((batch,), _RULE["allow_all"])
        elif self.mode == "argmax":
            safe_level = top_level == 0
            safe_type = ~self._risky[top_type]
            disabled = ~self._enabled[top_type]
            rule = torch.full((batch,), _RULE["argmax_hint"])
            rule[disabled] = _RULE["type_disabled"]
            rule[safe_type] = _RULE["argmax_safe_type"]
            rule[safe_level] = _RULE["argmax_safe_level"]
            action[rule == _RULE["argmax_hint"]] = _HINT
        else:
            risk, severe = threshold_scores(lp, tp)
            refuse_hit = severe >= self._refuse_at
            hint_hit = risk >= self._hint_at
            fire_refuse = refuse_hit & self._enabled
            fire_hint = hint_hit & self._enabled
            muted = (refuse_hit | hint_hit) & self._risky & ~self._enabled
            rule = torch.full((batch,), _RULE["below_thresholds"])
            is_muted = muted.any(1)
            rule[is_muted] = _RULE["type_disabled"]
            type_[is_muted] = _masked_argmax(risk, muted)[is_muted]
            is_hint = fire_hint.any(1)
            rule[is_hint] = _RULE["hint_threshold"]
            action[is_hint] = _HINT
            type_[is_hint] = _masked_argmax(risk, fire_hint)[is_hint]
            level[is_hint] = 1 + lp[:, 1:].argmax(1)[is_hint]
            is_refuse = fire_refuse.any(1)
            rule[is_refuse] = _RULE["refuse_threshold"]
            action[is_refuse] = _REFUSE
            type_[is_refuse] = _masked_argmax(severe, fire_refuse)[is_refuse]
            level[is_refuse] = lp.shape[1] - 1
        rule[failed] = _RULE["scoring_failed"]
        action[failed] = _REFUSE if self.fail_closed else _ALLOW
        level[failed] = -1
        type_[failed] = -1
        return action, rule, level, type_

    def _record(self, lp: torch.Tensor, tp: torch.Tensor, action: int, rule: int, level: int,
                type_: int) -> SafetyDecision:
        levels, types = self.taxonomy.levels, self.taxonomy.types
        level_probs = dict(zip(levels, map(float, lp)))
        type_probs = dict(zip(types, map(float, tp)))
        if RULES[rule] == "scoring_failed":
            return self._failed_record(level_probs, type_probs, action, "non-finite safety probabilities")
        level_name, type_name = levels[level], types[type_]
        hint = refusal = None
        if action == _HINT:
            hint = self.hint_text(level_name, type_name)
        elif action == _REFUSE:
            hint = self.hint_text(levels[-1], type_name)
            refusal = self.refusals[type_name].format(type=self.labels[type_name])
        return SafetyDecision(level_probs=level_probs, type_probs=type_probs, level=level_name, type=type_name,
                              action=ACTIONS[action], rule=RULES[rule], policy=self.name, hint=hint, refusal=refusal)

    def _failed_record(self, level_probs: dict[str, float], type_probs: dict[str, float], action: int,
                       error: str) -> SafetyDecision:
        refusal = self.scoring_failure_refusal if action == _REFUSE else None
        return SafetyDecision(level_probs=level_probs, type_probs=type_probs, level=None, type=None,
                              action=ACTIONS[action], rule="scoring_failed", policy=self.name, refusal=refusal,
                              scoring_failed=True, error=error)

    def hint_text(self, level: str, type_: str) -> str:
        """The hint for a (risk level, risk type) pair, with the type's label filled in."""
        return self.hints[level][type_].format(type=self.labels[type_])


# ---------------------------------------------------------------------- helpers


def threshold_scores(level_probs: torch.Tensor, type_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-type scores that ``mode: thresholds`` compares with its thresholds, (B, T) each:
    ``risk[t] = q[t] * (1 - p[0])`` (hint) and ``severe[t] = q[t] * p[L-1]`` (refuse).
    `safevlm calibrate` chooses thresholds on exactly these scores."""
    return type_probs * (1.0 - level_probs[:, :1]), type_probs * level_probs[:, -1:]


def _threshold(value: float | None) -> float:
    return math.inf if value is None else float(value)


def _masked_argmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(~mask, -1.0).argmax(1)


def _as_matrix(values: Any, width: int, what: str, single: bool = False) -> torch.Tensor:
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


def _restrict(shipped: dict[str, Any], taxonomy: Taxonomy) -> dict[str, Any]:
    """The shipped texts for the levels and types this taxonomy has (another taxonomy keeps the '*' texts)."""
    keep = set(taxonomy.risk_types) | {WILDCARD}
    data = copy.deepcopy(shipped)
    data["labels"] = {k: v for k, v in data["labels"].items() if k in keep}
    data["refusals"] = {k: v for k, v in data["refusals"].items() if k in keep}
    data["hints"] = {level: {k: v for k, v in texts.items() if k in keep}
                     for level, texts in data["hints"].items() if level in taxonomy.levels}
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _validate(data: dict[str, Any], taxonomy: Taxonomy, source: str) -> None:
    """Check a user policy strictly; one error lists every problem found."""
    problems: list[str] = []
    risk_types = set(taxonomy.risk_types)
    hint_levels = list(taxonomy.levels[1:])

    def unknown(names, known, where: str, what: str) -> None:
        bad = sorted(str(n) for n in names if n not in known)
        if bad:
            problems.append(f"unknown {what} {bad} in {where} (known: {sorted(known)})")

    def mapping(value: Any, where: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            problems.append(f"{where} must be a mapping, got {type(value).__name__}")
            return {}
        return value

    def text(value: Any, where: str, placeholders: set[str]) -> None:
        if not isinstance(value, str):
            problems.append(f"{where} must be a string, got {type(value).__name__}")
            return
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            problems.append(f"{where}: bad template ({exc})")
            return
        if fields - placeholders:
            allowed = sorted("{" + p + "}" for p in placeholders) or "none"
            problems.append(f"{where}: unknown placeholders {sorted(fields - placeholders)} (allowed: {allowed})")

    def rule(value: Any, where: str) -> None:
        value = mapping(value, where)
        unknown(value, _RULE_KEYS, where, "keys")
        if "enabled" in value and not isinstance(value["enabled"], bool):
            problems.append(f"{where}.enabled must be true or false")
        for key in ("hint", "refuse"):
            if key in value and value[key] is not None:
                v = value[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    problems.append(f"{where}.{key} must be a probability in [0, 1] or null, got {v!r}")

    unknown(data, _TOP_KEYS, "the policy", "keys")
    if "mode" in data and data["mode"] not in MODES:
        problems.append(f"mode must be one of {list(MODES)}, got {data['mode']!r}")
    if "fail_closed" in data and not isinstance(data["fail_closed"], bool):
        problems.append("fail_closed must be true or false")
    for key in ("name", "hint_prefix"):
        if key in data and not isinstance(data[key], str):
            problems.append(f"{key} must be a string")
    if "defaults" in data:
        rule(data["defaults"], "defaults")
    types = mapping(data.get("types"), "types")
    unknown(types, risk_types, "types", "risk type names")
    for name, value in types.items():
        if name in risk_types:
            rule(value, f"types.{name}")
    labels = mapping(data.get("labels"), "labels")
    unknown(labels, risk_types, "labels", "risk type names")
    for name, value in labels.items():
        text(value, f"labels.{name}", set())
    hints = mapping(data.get("hints"), "hints")
    unknown(hints, set(hint_levels), "hints", "risk level names")
    for level, texts in hints.items():
        texts = mapping(texts, f"hints.{level}")
        unknown(texts, risk_types | {WILDCARD}, f"hints.{level}", "risk type names")
        for name, value in texts.items():
            text(value, f"hints.{level}.{name}", {"type"})
    refusals = mapping(data.get("refusals"), "refusals")
    unknown(refusals, risk_types | {WILDCARD}, "refusals", "risk type names")
    for name, value in refusals.items():
        text(value, f"refusals.{name}", {"type"})
    if "scoring_failure_refusal" in data:
        text(data["scoring_failure_refusal"], "scoring_failure_refusal", set())
    if problems:
        raise PolicyError(f"{source}: " + "; ".join(problems))
