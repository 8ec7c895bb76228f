"""A policy's spec: the shipped ``policies/default.yaml``, a user's YAML file or dict laid over it,
strict validation (unknown keys, levels or types are an error that names them), and the
resolved settings a `SafetyPolicy` is built from."""

from __future__ import annotations

import copy
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..safe_files import read_yaml
from ..taxonomy import Taxonomy
from .rule import MODES

WILDCARD = "*"  # a text for any type that has none of its own
_TOP_KEYS = {
    "name",
    "mode",
    "fail_closed",
    "hint_prefix",
    "defaults",
    "types",
    "labels",
    "hints",
    "refusals",
    "scoring_failure_refusal",
}
_RULE_KEYS = {"enabled", "hint", "refuse"}


class PolicyError(ConfigError):
    """A policy file or dict is invalid (unknown keys, levels or types, bad values)."""


@dataclass(frozen=True)
class TypeRule:
    """Per-type settings: whether the type is acted on, and its thresholds (``None`` = never)."""

    enabled: bool = True
    hint: float | None = 0.5
    refuse: float | None = 0.5


@dataclass(frozen=True)
class PolicySpec:
    """Everything a policy is: resolved for one taxonomy (every risk type has its rule and texts)."""

    name: str
    mode: str
    fail_closed: bool
    rules: dict[str, TypeRule]
    hints: dict[str, dict[str, str]]  # risk level -> risk type -> text
    refusals: dict[str, str]
    labels: dict[str, str]
    hint_prefix: str
    scoring_failure_refusal: str


def default_file() -> Path:
    """The shipped policy file (package data)."""
    return Path(str(resources.files("safety_modules") / "policies" / "default.yaml"))


def read_policy_file(path: str | Path) -> dict[str, Any]:
    """A user policy file as a dict (its ``name`` defaults to the file's stem)."""
    path = Path(path)
    try:
        data = read_yaml(path, "policy file") or {}
    except ConfigError as exc:
        raise PolicyError(str(exc)) from None
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return data


def resolve_spec(data: dict[str, Any] | None, taxonomy: Taxonomy, source: str) -> PolicySpec:
    """The shipped default with ``data`` laid over it (``data`` is validated strictly), for ``taxonomy``."""
    data = data or {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy must be a mapping, got {type(data).__name__}")
    validate(data, taxonomy, source)
    shipped = read_yaml(default_file(), "policy file")
    merged = _merge(_restrict(shipped, taxonomy), data)
    return _build(merged, taxonomy, source)


def _build(data: dict[str, Any], taxonomy: Taxonomy, source: str) -> PolicySpec:
    """Per-type rules and texts ('*' texts fill in); a risk type left without a text is an error."""
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
    return PolicySpec(
        name=str(data["name"]),
        mode=data["mode"],
        fail_closed=data["fail_closed"],
        rules=rules,
        hints=hints,
        refusals=refusals,
        labels=labels,
        hint_prefix=data["hint_prefix"],
        scoring_failure_refusal=data["scoring_failure_refusal"],
    )


def _restrict(shipped: dict[str, Any], taxonomy: Taxonomy) -> dict[str, Any]:
    """The shipped texts for the levels and types this taxonomy has (another taxonomy keeps the '*' texts)."""
    keep = set(taxonomy.risk_types) | {WILDCARD}
    data = copy.deepcopy(shipped)
    data["labels"] = {k: v for k, v in data["labels"].items() if k in keep}
    data["refusals"] = {k: v for k, v in data["refusals"].items() if k in keep}
    data["hints"] = {
        level: {k: v for k, v in texts.items() if k in keep}
        for level, texts in data["hints"].items()
        if level in taxonomy.levels
    }
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


def validate(data: dict[str, Any], taxonomy: Taxonomy, source: str) -> None:
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
