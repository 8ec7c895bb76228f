"""Gate policies: probabilities -> allow / hint / refuse. `SafetyPolicy` (safety_policy.py) composes the
YAML spec (spec.py), the decision maths (rule.py) and the records with their texts (records.py)."""

from .records import SafetyDecision
from .rule import ACTIONS, MODES, RULES
from .safety_policy import SafetyPolicy
from .spec import WILDCARD, PolicyError, PolicySpec, TypeRule

__all__ = [
    "ACTIONS",
    "MODES",
    "RULES",
    "WILDCARD",
    "PolicyError",
    "PolicySpec",
    "SafetyDecision",
    "SafetyPolicy",
    "TypeRule",
]
