"""The vision side alone: LLaVA's feature selection, and loading only the tower and projector (for scanning)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelError
from ...safe_files import read_json
from ..errors import check_safetensors
from .common import (
    check_llava,
    is_original_format,
    local_folder,
    read_config,
    resolve_device,
    resolve_dtype,
)
from .original import convert_original_key, original_image_processor, original_llava_config


def select_vision_features(
    vision_tower: torch.nn.Module, pixel_values: torch.Tensor, layer: int, strategy: str
) -> torch.Tensor:
    """Run the vision tower once; return hidden state ``layer`` (B, N, V), CLS dropped for the "default" strategy.

    This is LLaVA's feature selection, shared by `SafeLlava` and the vision-only scan path.
    For CLIP towers only the layers up to the selected one run (LLaVA-1.5 reads layer -2, so
    the base model itself computes one layer it throws away): embeddings, pre-layernorm and
    the first ``layer`` encoder layers are called here in order, which is exactly what the
    tower computes for ``hidden_states[layer]``. Nothing on the tower is changed, so any
    number of threads may call this on one tower. Other towers run whole with hidden states.
    """
    layers: Any = vision_encoder(vision_tower).layers
    keep = layer if layer >= 0 else len(layers) + 1 + layer
    if not 0 <= keep <= len(layers):
        raise ModelError(f"vision feature layer {layer} does not exist in a tower of {len(layers)} layers")
    if _is_clip_tower(vision_tower):
        clip: Any = vision_tower
        hidden = clip.pre_layrnorm(clip.embeddings(pixel_values))
        for encoder_layer in layers[:keep]:
            hidden = encoder_layer(hidden, None)  # CLIP's vision encoder runs without an attention mask
        features = hidden
    else:
        features = vision_tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states[keep]
    if strategy == "default":
        features = features[:, 1:]
    return features


def _is_clip_tower(vision_tower: torch.nn.Module) -> bool:
    return getattr(vision_tower.config, "model_type", None) == "clip_vision_model" and all(
        hasattr(vision_tower, name) for name in ("embeddings", "pre_layrnorm", "encoder")
    )


def vision_encoder(vision_tower: torch.nn.Module) -> torch.nn.Module:
    """The tower's encoder (the module holding its ``layers``)."""
    return next(module for name, module in vision_tower.named_modules() if name.endswith("encoder"))


@dataclass
class VisionParts:
    """What a scan needs from a LLaVA checkpoint: its config, vision tower, LLaVA projector and image processor."""

    config: Any
    vision_tower: torch.nn.Module
    projector: torch.nn.Module
    image_processor: Any


_HF_TOWER_PREFIXES = ("model.vision_tower.", "vision_tower.")
_HF_PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.")


def _strip_prefix(key: str, prefixes) -> str | None:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return None


def _read_selected(folder: Path, rename: Callable[[str], str | None]) -> dict[str, torch.Tensor]:
    """Read only the tensors whose key ``rename(key)`` maps to a name (others are never read).

    safetensors files are opened lazily (``safe_open``; with a shard index, shards holding
    none of the wanted tensors are not opened at all); ``.bin`` files are memory-mapped,
    so the language model's tensors are not read from disk either way.
    """
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # sharded: open only the shards that hold wanted tensors
        weight_map = read_json(index, "shard index", error=ModelError)["weight_map"]
        files = sorted({folder / shard for key, shard in weight_map.items() if rename(key) is not None})
    for file in files:
        check_safetensors(file)  # only the shards read are checked: the others may be anything
        with safe_open(str(file), framework="pt") as reader:
            for key in reader.keys():  # noqa: SIM118 - safe_open readers are not dicts
                name = rename(key)
                if name is not None:
                    state[name] = reader.get_tensor(key)
    if files:
        return state
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(f"{folder} holds no *.safetensors or pytorch_model*.bin weights")
    for file in bins:
        mapped = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        for key, tensor in mapped.items():
            name = rename(key)
            if name is not None:
                state[name] = tensor.clone()
        del mapped
    return state


def _build_tower(vision_config: Any, state: dict[str, torch.Tensor], dtype: torch.dtype, where: Path):
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    tower_class: Any = MODEL_MAPPING[type(vision_config)]
    tower, info = tower_class.from_pretrained(
        None, config=vision_config, state_dict=state, dtype=dtype, output_loading_info=True
    )
    if info["missing_keys"]:
        raise ModelError(f"vision tower weights missing from {where}: {sorted(info['missing_keys'])[:5]} ...")
    return tower


def _original_rename(key: str) -> str | None:
    """An original checkpoint's key through the full loader's key map (`ORIGINAL_KEY_MAP`), then as an HF key."""
    try:
        return _hf_rename(convert_original_key(key))
    except KeyError:
        return None


def _hf_rename(key: str) -> str | None:
    tower_key = _strip_prefix(key, _HF_TOWER_PREFIXES)
    if tower_key is not None:
        return "tower." + tower_key
    projector_key = _strip_prefix(key, _HF_PROJECTOR_PREFIXES)
    return None if projector_key is None else "projector." + projector_key


def load_vision_parts(
    name_or_path: str | Path,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = None,
) -> VisionParts:
    """Load only the vision tower, the LLaVA projector and the image processor of a LLaVA-1.5 checkpoint.

    The language model's weights are never read: only the tower's and projector's tensors
    are taken from the checkpoint files (HF or original layout). The projector is needed
    for the base fingerprint that ties safety modules to their base. The image processor is
    the one `load_base` gives the same checkpoint (padding to a square for original ones).
    """
    from transformers import AutoImageProcessor, CLIPVisionModel, LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    folder = local_folder(name_or_path)
    raw = read_config(folder)
    if is_original_format(raw):
        llava_config, _, vt_folder = original_llava_config(folder, raw)
        state = _read_selected(folder, _original_rename)
        tower_state = {k[len("tower.") :]: v for k, v in state.items() if k.startswith("tower.")}
        if tower_state:
            tower = _build_tower(llava_config.vision_config, tower_state, dtype, folder)
        else:  # the usual case: the original checkpoints do not hold the tower
            tower = CLIPVisionModel.from_pretrained(vt_folder, dtype=dtype)
        image_processor = original_image_processor(vt_folder, raw)
    else:
        check_llava(raw, name_or_path)
        llava_config = LlavaConfig.from_pretrained(folder)
        state = _read_selected(folder, _hf_rename)
        tower_state = {k[len("tower.") :]: v for k, v in state.items() if k.startswith("tower.")}
        tower = _build_tower(llava_config.vision_config, tower_state, dtype, folder)
        image_processor = AutoImageProcessor.from_pretrained(folder)

    projector = LlavaMultiModalProjector(llava_config)
    projector_state = {k[len("projector.") :]: v for k, v in state.items() if k.startswith("projector.")}
    try:
        projector.load_state_dict(projector_state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"LLaVA projector weights in {folder} do not fit its config: {exc}") from None
    tower.to(device=device, dtype=dtype).eval().requires_grad_(False)
    projector.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return VisionParts(llava_config, tower, projector, image_processor)
