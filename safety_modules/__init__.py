"""Safety modules for a frozen LLaVA-v1.5: projector, safety tokens, safety head, gate, training, scanning."""
from .config import SafetyConfig
from .modeling import CheckpointError, IncompatibleBaseError, SafetyModules
from .taxonomy import Taxonomy
from .wrapper import SafeLlava, SafeLlavaOutput, SafetyScores

__all__ = [
    "CheckpointError",
    "IncompatibleBaseError",
    "SafeLlava",
    "SafeLlavaOutput",
    "SafetyConfig",
    "SafetyModules",
    "SafetyScores",
    "Taxonomy",
]
