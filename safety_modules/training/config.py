"""`TrainConfig`: every setting of a training stage, read from a YAML recipe (see ``train/*.yaml``)."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator
from pydantic.dataclasses import dataclass

from ..errors import ConfigError
from ..safe_files import SETTINGS_CONFIG, Settings

MixedPrecision = Literal["auto", "no", "fp16", "bf16"]  # auto = bf16 on GPU, no on CPU (accelerate's names)
Dtype = Literal["auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32"]  # auto = bf16 on GPU, else fp32


@dataclass(config=SETTINGS_CONFIG)
class DataFile:
    """A record file and the folder its image paths are relative to (default: the file's folder)."""

    path: str
    image_root: str | None = None

    @property
    def root(self) -> Path:
        return Path(self.image_root) if self.image_root else Path(self.path).parent


@dataclass(config=SETTINGS_CONFIG)
class LoraSettings:
    r: int = 256
    alpha: int = 16
    dropout: float = 0.05


def data_files(entries: Any) -> Any:
    """A recipe's ``train_data``/``eval_data``: each entry a path or ``{path, image_root}`` (pydantic checks
    the rest)."""
    if isinstance(entries, (str, Path)):
        raise ConfigError(f"a data list is a YAML list of paths or {{path, image_root}}, got the string {entries!r}")
    if isinstance(entries, list):
        return [{"path": str(e)} if isinstance(e, (str, Path)) else e for e in entries]
    return entries


@dataclass(config=SETTINGS_CONFIG)
class TrainConfig(Settings):
    """Settings of one stage. Defaults are the paper's stage-1 values where it gives them."""

    KIND = "training"

    stage: int = 1
    base: str = "llava-hf/llava-1.5-7b-hf"
    safety: str | None = None  # stage 1: start from these modules (default fresh); stage 2: required
    train_data: list[DataFile] = field(default_factory=list)
    eval_data: list[DataFile] = field(default_factory=list)
    output_dir: str = "runs/stage1"
    seed: int = 42
    epochs: float = 3
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    per_device_batch_size: int = 2
    gradient_accumulation_steps: int = 16
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    mixed_precision: MixedPrecision = "auto"
    dtype: Dtype = "auto"  # the frozen base's dtype; trained weights stay float32
    gradient_checkpointing: bool = False
    num_workers: int = 2
    max_length: int = 2048
    # Not settable: the system prompt belongs to the base's conversation format (see __post_init__).
    system_prompt: str | None = None
    safety_loss_weight: float | None = None  # default: the modules' config (10, as in the paper)
    logging_steps: int = 10
    eval_steps: int | None = None
    save_steps: int | None = None
    save_total_limit: int | None = 2
    resume_from: str | None = None  # a checkpoint folder, or "latest" (the newest in output_dir)
    train_safety_modules: bool | None = None  # default: True in stage 1, False in stage 2
    lora: LoraSettings = field(default_factory=LoraSettings)
    progress_bar: bool = True

    @field_validator("train_data", "eval_data", mode="before")
    @classmethod
    def _data_files(cls, entries: Any) -> Any:
        return data_files(entries)

    def __post_init__(self) -> None:
        if self.system_prompt is not None:
            raise ConfigError(
                "system_prompt cannot be set: training uses the base's own conversation format "
                "(vicuna_v1's system prompt for original checkpoints, none for llava-hf bases), "
                "the one inference uses; see safety_modules/modeling/llava/conversation.py"
            )
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, got {self.stage}")
        if self.train_safety_modules is None:
            self.train_safety_modules = self.stage == 1
        if self.stage == 1 and not self.train_safety_modules:
            raise ConfigError("stage 1 trains the safety modules: train_safety_modules cannot be false")
        if self.stage == 2 and not self.safety:
            raise ConfigError("stage 2 needs the stage-1 safety modules: set `safety:` to their folder")
        if not self.train_data:
            raise ConfigError("train_data is empty: list at least one record file")
