"""Stage 3: reinforcement-learning alignment (the UnsafeConcepts / SaferVLM method), PPO as published and GRPO.

`train_rl(RLConfig)` runs it (``safevlm train rl CONFIG.yaml``); see ``train/README.md``.
"""

from .config import RLConfig
from .trainer import RLResult, train_rl

__all__ = ["RLConfig", "RLResult", "train_rl"]
