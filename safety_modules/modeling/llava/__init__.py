"""Loading a LLaVA-1.5 base: HF layout (`hf`), original LLaVA layout (`original`), vision side only (`vision`)."""

from __future__ import annotations

from .common import (
    DEVICE_ENV,
    ORIGINAL_ARCHITECTURES,
    is_original_format,
    local_folder,
    read_config,
    resolve_device,
    resolve_dtype,
)
from .conversation import LLAVA_CHAT_TEMPLATE
from .hf import load_base
from .original import convert_original_key, llama_tokenizer
from .vision import (
    VisionParts,
    load_vision_parts,
    select_vision_features,
    vision_encoder,
)

__all__ = [
    "DEVICE_ENV",
    "LLAVA_CHAT_TEMPLATE",
    "ORIGINAL_ARCHITECTURES",
    "VisionParts",
    "convert_original_key",
    "is_original_format",
    "llama_tokenizer",
    "load_base",
    "load_vision_parts",
    "local_folder",
    "read_config",
    "resolve_device",
    "resolve_dtype",
    "select_vision_features",
    "vision_encoder",
]
