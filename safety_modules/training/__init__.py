"""Two-stage training: stage 1 (safety modules on a frozen LLaVA) and stage 2 (LoRA on the language model)."""

from .config import TrainConfig
from .trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
