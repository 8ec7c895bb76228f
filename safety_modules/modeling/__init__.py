"""The safety modules and their building blocks."""

from .fingerprint import base_fingerprint
from .head import SafetyHead
from .projector import SafetyProjector
from .safety_modules import CheckpointError, IncompatibleBaseError, SafetyModules
from .scores import SafetyScores

__all__ = [
    "CheckpointError",
    "IncompatibleBaseError",
    "SafetyHead",
    "SafetyModules",
    "SafetyProjector",
    "SafetyScores",
    "base_fingerprint",
]
