"""`SafetyConfig`: every size of the safety modules, derived from the base model's config."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..safe_files import read_json
from ..taxonomy import DEFAULT_LEVELS, DEFAULT_TYPES, SAFE_TYPE, Taxonomy


@dataclass
class SafetyConfig:
    """Sizes, taxonomy and loss weight of the safety modules.

    Build it with :meth:`from_llava_config` so the widths match the base model: at
    LLaVA-1.5-7B this gives the reference shapes (vision 1024, LLM 4096, 576 image
    tokens, projector hidden 1088 = 1024 + 64, 2 x 64 safety tokens, 8 head heads).
    """

    vision_hidden_size: int = 1024
    text_hidden_size: int = 4096
    num_image_tokens: int = 576
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    # C-Abstractor
    projector_hidden_size: int = 1088
    projector_depth: int = 3
    projector_se_ratio: float = 0.25
    # safety tokens: set A prefixes the head's keys, set B prefixes the LLM's image tokens
    num_head_tokens: int = 64
    num_llm_tokens: int = 64
    token_init_std: float = 0.02
    # safety head
    head_num_heads: int = 8
    head_uses_prompt: bool = True
    safety_loss_weight: float = 10.0
    # taxonomy
    level_names: list[str] = field(default_factory=lambda: list(DEFAULT_LEVELS))
    type_names: list[str] = field(default_factory=lambda: list(DEFAULT_TYPES))
    safe_type: str = SAFE_TYPE
    # filled when the modules are attached to (or created for) a base model
    base_fingerprint: dict[str, Any] | None = None
    # set by `safevlm calibrate`: probabilities are softmax(logits / T); one T per head (a list of one per
    # class, written by the first version of calibrate, is still read).
    # None = uncalibrated (softmax of the raw logits).
    level_temperature: float | list[float] | None = None
    type_temperature: float | list[float] | None = None
    # set by training when it saves the modules (`training.provenance`): stage, steps, data files with their
    # record counts, held-out metrics. None = not trained by this package (fresh modules, or saved before it
    # was recorded); `safevlm assess` warns then, and the model card says so.
    training: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        grid = int(round(self.num_image_tokens**0.5))
        if grid * grid != self.num_image_tokens:
            raise ModelError(f"num_image_tokens={self.num_image_tokens} is not a square grid")
        if self.text_hidden_size % self.head_num_heads:
            raise ModelError(
                f"text_hidden_size={self.text_hidden_size} is not divisible by head_num_heads={self.head_num_heads}"
            )
        _ = self.taxonomy  # building it validates the names
        _check_temperature(self.level_temperature, self.num_levels, "level_temperature")
        _check_temperature(self.type_temperature, self.num_types, "type_temperature")

    @property
    def grid_size(self) -> int:
        return int(round(self.num_image_tokens**0.5))

    @property
    def taxonomy(self) -> Taxonomy:
        return Taxonomy(tuple(self.level_names), tuple(self.type_names), self.safe_type)

    @property
    def num_levels(self) -> int:
        return len(self.level_names)

    @property
    def num_types(self) -> int:
        return len(self.type_names)

    @classmethod
    def from_llava_config(cls, llava_config: Any, **overrides: Any) -> SafetyConfig:
        """Derive the sizes from a `transformers.LlavaConfig`; keyword arguments override any field."""
        vision = llava_config.vision_config
        text = llava_config.text_config
        layer = llava_config.vision_feature_layer
        if not isinstance(layer, int):
            raise ModelError(f"only a single vision_feature_layer is supported, got {layer!r}")
        strategy = llava_config.vision_feature_select_strategy
        num_patches = (vision.image_size // vision.patch_size) ** 2
        num_head_tokens = overrides.get("num_head_tokens", cls.num_head_tokens)
        values: dict[str, Any] = dict(
            vision_hidden_size=vision.hidden_size,
            text_hidden_size=text.hidden_size,
            num_image_tokens=num_patches,
            vision_feature_layer=layer,
            vision_feature_select_strategy=strategy,
            # The reference's hidden width is vision width + number of safety tokens (1024 + 64).
            projector_hidden_size=vision.hidden_size + num_head_tokens,
        )
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SafetyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"model_type", "format_version"})
        if unknown:
            raise ModelError(f"unknown keys in safety config: {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> None:
        data = {"model_type": "safety_modules", "format_version": 1, **self.to_dict()}
        Path(path).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SafetyConfig:
        data = read_json(path, "safety-modules config", error=ModelError)
        model_type = data.get("model_type") if isinstance(data, dict) else None
        if model_type != "safety_modules":
            raise ModelError(f"{path} is not a safety-modules config (model_type={model_type!r})")
        return cls.from_dict(data)


def _check_temperature(value: Any, classes: int, name: str) -> None:
    """A temperature is None, a positive finite number, or a list of one per class."""
    if value is None:
        return
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and len(value) != classes:
        raise ModelError(f"{name} has {len(value)} values for {classes} classes")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ModelError(f"{name} must be a positive number or a list of them, got {value!r}")
