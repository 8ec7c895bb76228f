"""Safety modules for a frozen LLaVA-v1.5: projector, safety tokens, safety head, gate, training, scanning."""

from .gate import Gate, GatedAnswer
from .modeling import (
    CheckpointError,
    IncompatibleBaseError,
    SafeLlava,
    SafeLlavaOutput,
    SafetyConfig,
    SafetyModules,
    SafetyScores,
)
from .policy import PolicyError, SafetyDecision, SafetyPolicy
from .taxonomy import Taxonomy

__all__ = [
    "CheckpointError",
    "Gate",
    "GatedAnswer",
    "IncompatibleBaseError",
    "PolicyError",
    "SafeLlava",
    "SafeLlavaOutput",
    "SafetyConfig",
    "SafetyDecision",
    "SafetyModules",
    "SafetyPolicy",
    "SafetyScores",
    "Taxonomy",
]
