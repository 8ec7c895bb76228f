"""What every loader shares: device and dtype resolution, finding a model folder, reading its config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigError, ModelError
from ...safe_files import read_json
from ..errors import check_safetensors, from_hub

DEVICE_ENV = "SAFEVLM_DEVICE"
ORIGINAL_ARCHITECTURES = {"LlavaLlamaForCausalLM"}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> ``$SAFEVLM_DEVICE`` when set, else CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        chosen = os.environ.get(DEVICE_ENV, "").strip()
        if chosen and chosen != "auto":
            return torch.device(chosen)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"`` -> bfloat16 on GPU, float32 on CPU; strings like ``"bf16"`` are accepted."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if dtype not in names:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def local_folder(name_or_path: str | Path, allow_patterns: list[str] | None = None) -> Path:
    """A local folder as is; otherwise a Hugging Face hub id fetched with ``snapshot_download``
    (a `CheckpointError` naming the model when it is neither, e.g. a hub id offline and not in the cache)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/")) or str(name_or_path).count("/") != 1:
        raise FileNotFoundError(f"model folder not found: {name_or_path}")
    from huggingface_hub import snapshot_download

    with from_hub(f"model {name_or_path}"):
        return Path(snapshot_download(str(name_or_path), allow_patterns=allow_patterns))


def check_weight_files(folder: Path) -> None:
    """A `CheckpointError` naming the first unreadable ``*.safetensors`` file of a model folder (headers only)."""
    for file in sorted(folder.glob("*.safetensors")):
        check_safetensors(file)


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json`` as a dict (a clear error when it is not a model folder)."""
    file = folder / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a model folder")
    config = read_json(file, "model config", error=ModelError)
    if not isinstance(config, dict):
        raise ModelError(f"{file}: a model config is a JSON object, got {type(config).__name__}")
    return config


def is_original_format(config: dict[str, Any]) -> bool:
    """True for original LLaVA checkpoints (``LlavaLlamaForCausalLM`` with ``mm_*`` keys)."""
    return bool(ORIGINAL_ARCHITECTURES & set(config.get("architectures") or [])) or "mm_vision_tower" in config


def check_llava(config: dict[str, Any], name: str | Path) -> None:
    """Refuse an HF-layout folder that is not a LLaVA model."""
    if config.get("model_type") != "llava":
        raise ModelError(f"{name} is a {config.get('model_type')!r} model, not a LLaVA (model_type 'llava')")
