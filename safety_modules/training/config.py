"""`TrainConfig`: every setting of a training stage, read from a YAML recipe (see ``train/*.yaml``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self


@dataclass
class DataFile:
    """A record file and the folder its image paths are relative to (default: the file's folder)."""

    path: str
    image_root: str | None = None

    @property
    def root(self) -> Path:
        return Path(self.image_root) if self.image_root else Path(self.path).parent


@dataclass
class LoraSettings:
    r: int = 256
    alpha: int = 16
    dropout: float = 0.05


class Recipe:
    """Reading and writing a settings dataclass as a YAML recipe (shared by `TrainConfig` and `RLConfig`)."""

    KIND = "training"  # names the settings in the unknown-key error

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.KIND} settings: {unknown}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> Self:
        """The recipe at ``path``; each override that is not None replaces its setting."""
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class TrainConfig(Recipe):
    """Settings of one stage. Defaults are the paper's stage-1 values where it gives them."""

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
    mixed_precision: str = "auto"  # auto = bf16 on GPU, none on CPU; or "bf16", "no"
    dtype: str = "auto"  # the frozen base's dtype; trained weights stay float32
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

    def __post_init__(self) -> None:
        if self.system_prompt is not None:
            raise ValueError(
                "system_prompt cannot be set: training uses the base's own conversation format "
                "(vicuna_v1's system prompt for original checkpoints, none for llava-hf bases), "
                "the one inference uses; see safety_modules/conversation.py"
            )
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        self.train_data = [_data_file(d) for d in self.train_data]
        self.eval_data = [_data_file(d) for d in self.eval_data]
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if self.train_safety_modules is None:
            self.train_safety_modules = self.stage == 1
        if self.stage == 1 and not self.train_safety_modules:
            raise ValueError("stage 1 trains the safety modules: train_safety_modules cannot be false")
        if self.stage == 2 and not self.safety:
            raise ValueError("stage 2 needs the stage-1 safety modules: set `safety:` to their folder")
        if not self.train_data:
            raise ValueError("train_data is empty: list at least one record file")


def _data_file(entry: Any) -> DataFile:
    if isinstance(entry, DataFile):
        return entry
    if isinstance(entry, (str, Path)):
        return DataFile(str(entry))
    if isinstance(entry, dict):
        return DataFile(**entry)
    raise ValueError(f"a data entry is a path or {{path, image_root}}, got {entry!r}")
