"""`RLConfig`: every setting of the RL stage, read from a YAML recipe (``train/rl_*.yaml``).

Defaults are the published PPO settings (SaferVLM ``RLHF/scripts/train_ppo.sh`` and the defaults
of ``finetune_lora_ppo.py``, benchmarks B.8) where they exist.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal

from pydantic import field_validator
from pydantic.dataclasses import dataclass

from ...errors import ConfigError
from ...safe_files import SETTINGS_CONFIG, Settings
from ..config import DataFile, Dtype, LoraSettings, MixedPrecision, data_files


@dataclass(config=SETTINGS_CONFIG)
class RLConfig(Settings):
    """Settings of the RL stage (PPO as published, or GRPO)."""

    KIND = "RL"

    algorithm: Literal["ppo", "grpo"] = "ppo"
    base: str = "llava-hf/llava-1.5-7b-hf"
    safety: str | None = None  # safety modules to attach (frozen); None = plain LLaVA (no tokens B)
    inject_safety_tokens: bool | None = None  # default: True when `safety` is set
    train_data: list[DataFile] = field(default_factory=list)  # records with alignment_label (data convert --split)
    eval_data: list[DataFile] = field(default_factory=list)
    output_dir: str = "runs/rl"
    seed: int = 42
    epochs: float = 4
    max_steps: int | None = None  # RL steps (one rollout batch each); overrides epochs
    rollout_batch_size: int = 32  # sequences sampled per RL step (GRPO: prompts x group_size)
    step_batch_size: int = 32  # sequences per optimizer step
    per_device_batch_size: int = 32  # sequences per forward/backward (gradient accumulation below step_batch_size)
    noptepochs: int = 1  # passes over each rollout batch
    group_size: int = 4  # GRPO: samples per prompt
    learning_rate: float = 3e-5
    weight_decay: float = 0.0
    warmup_steps: int = 5  # optimizer steps
    max_grad_norm: float = 1.0
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=128, alpha=256, dropout=0.05))
    kl_coef: float = 0.1  # fixed, per token (PPO: k1 clamped >= 0 in the reward; GRPO: k3 in the loss)
    entropy_coef: float = 0.02
    gamma: float = 1.0
    lam: float = 1.0
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    whiten_advantages: bool = True
    reward_scale: float = 10.0  # the published code multiplies rewards by 10 before GAE (whiten_rewards=False)
    temperature: float = 1.0
    max_new_tokens: int = 512  # response_len
    reward: Literal["classifier", "rules"] = "classifier"
    reward_classifier: str | None = None  # folder or hub id of the answer classifier (safetensors)
    reward_classifier_weights: str | None = None  # the published head+encoder .safetensors; then reward_classifier
    #                                               is the RoBERTa encoder folder (config + tokenizer)
    length_bonus: float = 4.0
    stop_penalty: float = -8.0
    mask_na: bool = True
    eval_max_new_tokens: int | None = None  # greedy evaluation length (default max_new_tokens)
    mixed_precision: MixedPrecision = "auto"
    dtype: Dtype = "auto"
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    save_steps: int | None = 50
    save_total_limit: int | None = 2
    resume_from: str | None = None
    progress_bar: bool = True

    @field_validator("train_data", "eval_data", mode="before")
    @classmethod
    def _data_files(cls, entries: Any) -> Any:
        return data_files(entries)

    def __post_init__(self) -> None:
        if self.inject_safety_tokens is None:
            self.inject_safety_tokens = self.safety is not None
        if self.inject_safety_tokens and self.safety is None:
            raise ConfigError(
                "inject_safety_tokens needs trained safety modules: set `safety:` (fresh tokens B are noise)"
            )
        if not self.train_data:
            raise ConfigError(
                "train_data is empty: list at least one record file "
                "(safevlm data convert unsafe-concepts ... --split train)"
            )
        if self.step_batch_size % self.per_device_batch_size or self.rollout_batch_size % self.step_batch_size:
            raise ConfigError(
                "rollout_batch_size must be a multiple of step_batch_size, and step_batch_size of "
                f"per_device_batch_size (got {self.rollout_batch_size}, {self.step_batch_size}, "
                f"{self.per_device_batch_size})"
            )
        if self.algorithm == "grpo" and (self.group_size < 2 or self.rollout_batch_size % self.group_size):
            raise ConfigError(
                f"grpo needs group_size >= 2 dividing rollout_batch_size, got {self.group_size} "
                f"and {self.rollout_batch_size}"
            )

    @property
    def prompts_per_step(self) -> int:
        return self.rollout_batch_size // (self.group_size if self.algorithm == "grpo" else 1)
