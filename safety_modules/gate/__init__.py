"""The gate: score, decide, generate. It drives a `SafeLlava` from above (the model never imports it)."""

from .answer import GatedAnswer
from .gate import REFUSAL_MODES, Gate

__all__ = ["REFUSAL_MODES", "Gate", "GatedAnswer"]
