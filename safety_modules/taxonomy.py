"""Risk taxonomy: level and type names, and the mapping tables from benchmark categories.

The default is the paper's: 4 risk levels and 7 risk types (6 risks + ``safe``).
A taxonomy is data (names in the config), so a head can be trained for another one,
for example the 9 UnsafeConcepts categories, without touching code.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

DEFAULT_LEVELS: tuple[str, ...] = ("safe_to_answer", "answer_carefully", "answer_or_reject", "reject")
DEFAULT_TYPES: tuple[str, ...] = (
    "politics",
    "illegal_risk",
    "insults_bullying",
    "fairness",
    "privacy",
    "misleading",
    "safe",
)
SAFE_TYPE = "safe"


@dataclass(frozen=True)
class Taxonomy:
    """Names of the risk levels (ordered, 0 = safe) and risk types (one of them is the safe type)."""

    levels: tuple[str, ...] = DEFAULT_LEVELS
    types: tuple[str, ...] = DEFAULT_TYPES
    safe_type: str = SAFE_TYPE

    def __post_init__(self) -> None:
        if len(self.levels) < 2 or len(self.types) < 2:
            raise ConfigError("a taxonomy needs at least 2 levels and 2 types")
        for kind, names in (("level", self.levels), ("type", self.types)):
            if len(set(names)) != len(names):
                raise ConfigError(f"duplicate {kind} names in taxonomy: {list(names)}")
        if self.safe_type not in self.types:
            raise ConfigError(f"safe type {self.safe_type!r} is not one of the types {list(self.types)}")

    @property
    def risk_types(self) -> tuple[str, ...]:
        """The types other than the safe one, in order."""
        return tuple(t for t in self.types if t != self.safe_type)

    def type_id(self, name: str) -> int:
        """Index of a type name; a clear error naming the known types otherwise."""
        try:
            return self.types.index(name)
        except ValueError:
            raise KeyError(f"unknown risk type {name!r}; known types: {list(self.types)}") from None

    def level_id(self, name_or_id: str | int) -> int:
        """Index of a level given by name or number."""
        if isinstance(name_or_id, int):
            if not 0 <= name_or_id < len(self.levels):
                raise KeyError(f"risk level {name_or_id} out of range 0..{len(self.levels) - 1}")
            return name_or_id
        try:
            return self.levels.index(name_or_id)
        except ValueError:
            raise KeyError(f"unknown risk level {name_or_id!r}; known levels: {list(self.levels)}") from None


# One table for every mapping from a benchmark's categories to (level, type) in the
# default taxonomy. Levels follow the paper's released data where it shows them
# (politics 3, cyberbullying 2, privacy 2, misleading 1); the rest are our choice.
RTVLM_SUBTASK_LABELS: dict[str, tuple[int, str]] = {
    "misleading_text": (1, "misleading"),
    "misleading_visual": (1, "misleading"),
    "order_correct_wrong": (1, "misleading"),
    "order_wrong_correct": (1, "misleading"),
    "celebrity": (2, "privacy"),
    "politics": (3, "politics"),
    "racial": (2, "fairness"),
    "captcha": (3, "illegal_risk"),
    "jailbreak": (3, "illegal_risk"),
    "face": (2, "fairness"),
}

UNSAFE_CONCEPTS_CATEGORY_LABELS: dict[str, tuple[int, str]] = {
    "Hate": (3, "insults_bullying"),
    "Harassment": (2, "insults_bullying"),
    "Violence": (3, "illegal_risk"),
    "Self-harm": (3, "illegal_risk"),
    "Sexual": (3, "illegal_risk"),
    "Shocking": (2, "illegal_risk"),
    "Illegal activity": (3, "illegal_risk"),
    "Deception": (1, "misleading"),
    "Public and personal health": (2, "illegal_risk"),
}

SAFE_LABEL: tuple[int, str] = (0, SAFE_TYPE)

# VLGuard's unsafe images, by `harmful_subcategory` (the paper sampled several of them:
# political -> politics, sexually explicit -> illegal risk, violence -> insults & bullying,
# discrimination -> fairness, professional advice and disinformation -> misleading).
VLGUARD_SUBCATEGORY_LABELS: dict[str, tuple[int, str]] = {
    "personal data": (2, "privacy"),
    "professional advice": (1, "misleading"),
    "political": (3, "politics"),
    "sexually explicit": (3, "illegal_risk"),
    "violence": (2, "insults_bullying"),
    "disinformation": (1, "misleading"),
    "sex": (2, "fairness"),
    "race": (2, "fairness"),
    "other": (2, "fairness"),
}
