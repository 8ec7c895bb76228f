"""The model: safety modules, their configuration, and `SafeLlava` (a frozen LLaVA-1.5 with the modules attached).

Only this package knows the base model's structure: `llava/` loads and converts LLaVA checkpoints and renders
their conversations; `safe_llava.py` offers the doors the rest of the project uses.
"""

from .configuration import SafetyConfig
from .fingerprint import base_fingerprint
from .head import SafetyHead
from .projector import SafetyProjector
from .safe_llava import SafeLlava, SafeLlavaOutput
from .safety_modules import CheckpointError, IncompatibleBaseError, SafetyModules
from .scores import SafetyScores

__all__ = [
    "CheckpointError",
    "IncompatibleBaseError",
    "SafeLlava",
    "SafeLlavaOutput",
    "SafetyConfig",
    "SafetyHead",
    "SafetyModules",
    "SafetyProjector",
    "SafetyScores",
    "base_fingerprint",
]
