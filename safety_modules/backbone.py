"""Loading a LLaVA-1.5 base model: HF layout (``llava-hf/...``) or the original LLaVA layout.

Both come back as a frozen ``transformers.LlavaForConditionalGeneration`` and its
``LlavaProcessor``. Original-format checkpoints (``liuhaotian/llava-v1.5-7b``:
``LlavaLlamaForCausalLM``, ``model.mm_projector.{0,2}``, vision tower named by
``mm_vision_tower``) are converted to the HF layout at load time with the key map
of transformers' LLaVA conversion script: ``<image>`` and ``<pad>`` are added to the
tokenizer and the embeddings grow to a multiple of 64, new rows set to the mean.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

ORIGINAL_ARCHITECTURES = {"LlavaLlamaForCausalLM"}
_VOCAB_MULTIPLE = 64

# LLaVA-1.5's prompt format (USER: <image>\n... ASSISTANT: ...), as a chat template.
LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set texts = [message['content']] -%}{%- set n_images = 0 -%}"
    "{%- else -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}"
    "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{ texts | join(' ') }}{{ ' ' }}"
    "{%- elif message['role'] == 'user' -%}USER: {{ '<image>\\n' * n_images }}{{ texts | join(' ') }}{{ ' ' }}"
    "{%- else -%}ASSISTANT: {% generation %}{{ texts | join(' ') }}{{ eos_token }}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)


DEVICE_ENV = "SAFEVLM_DEVICE"


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
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def local_folder(name_or_path: str | Path, allow_patterns: list[str] | None = None) -> Path:
    """A local folder as is; otherwise a Hugging Face hub id fetched with ``snapshot_download``."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/")) or str(name_or_path).count("/") != 1:
        raise FileNotFoundError(f"model folder not found: {name_or_path}")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(name_or_path), allow_patterns=allow_patterns))


def read_config(folder: Path) -> dict[str, Any]:
    file = folder / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a model folder")
    return json.loads(file.read_text())


def is_original_format(config: dict[str, Any]) -> bool:
    """True for original LLaVA checkpoints (``LlavaLlamaForCausalLM`` with ``mm_*`` keys)."""
    return bool(ORIGINAL_ARCHITECTURES & set(config.get("architectures") or [])) or "mm_vision_tower" in config


def load_base(
    name_or_path: str | Path,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = None,
):
    """Load a frozen LLaVA-1.5 base and its processor from a local folder or hub id, HF or original layout.

    Returns ``(model, processor)``; the model is in eval mode with ``requires_grad=False``.
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    folder = local_folder(name_or_path)
    config = read_config(folder)
    if is_original_format(config):
        model, processor = _load_original(folder, config, dtype)
    else:
        if config.get("model_type") != "llava":
            raise ValueError(f"{name_or_path} is a {config.get('model_type')!r} model, not a LLaVA (model_type 'llava')")
        model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        processor = AutoProcessor.from_pretrained(folder)
    model.to(device).eval().requires_grad_(False)
    return model, processor


# ---------------------------------------------------------------- original LLaVA layout

def convert_original_key(key: str) -> str:
    """Map an original LLaVA state-dict key to the transformers 5 ``LlavaForConditionalGeneration`` key."""
    if key.startswith("model.mm_projector.0."):
        return "model.multi_modal_projector.linear_1." + key[len("model.mm_projector.0."):]
    if key.startswith("model.mm_projector.2."):
        return "model.multi_modal_projector.linear_2." + key[len("model.mm_projector.2."):]
    for prefix in ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower.vision_tower."):
        # transformers 5's CLIPVisionModel has no inner ``vision_model`` level
        if key.startswith(prefix):
            return "model.vision_tower." + key[len(prefix):]
    if key.startswith("lm_head."):
        return key
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    raise KeyError(f"unexpected key in original LLaVA checkpoint: {key}")


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if files:
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(str(file)))
        return state
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(f"{folder} holds no *.safetensors or pytorch_model*.bin weights")
    state = {}
    for file in bins:
        # weights_only=True: tensors only, no arbitrary pickled code.
        state.update(torch.load(file, map_location="cpu", weights_only=True))
    return state


def _resolve_vision_tower(folder: Path, name: str) -> Path:
    for candidate in (Path(name), folder / name):
        if candidate.is_dir():
            return candidate
    return local_folder(name)


def _grow_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    if weight.shape[0] >= rows:
        return weight
    mean = weight.float().mean(0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(rows - weight.shape[0], -1)], dim=0)


def _original_llava_config(folder: Path, config: dict[str, Any]):
    """The `LlavaConfig`, tokenizer (with ``<image>``/``<pad>``) and vision-tower folder of an original checkpoint."""
    from transformers import AddedToken, AutoTokenizer, CLIPVisionConfig, LlamaConfig, LlavaConfig

    projector_type = config.get("mm_projector_type", "linear")
    if projector_type != "mlp2x_gelu":
        raise ValueError(f"only LLaVA-1.5 checkpoints (mm_projector_type 'mlp2x_gelu') are supported, got {projector_type!r}")
    vt_folder = _resolve_vision_tower(folder, config["mm_vision_tower"])
    vision_config = CLIPVisionConfig.from_pretrained(vt_folder)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_tokens(AddedToken("<image>", special=True, normalized=False), special_tokens=True)
    if "<pad>" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.pad_token = "<pad>"
    tokenizer.padding_side = "left"
    vocab = -(-len(tokenizer) // _VOCAB_MULTIPLE) * _VOCAB_MULTIPLE

    text_fields = {k: v for k, v in config.items() if not k.startswith("mm_") and k not in ("architectures", "model_type")}
    text_config = LlamaConfig(**{**text_fields, "vocab_size": vocab, "pad_token_id": tokenizer.pad_token_id})
    select = config.get("mm_vision_select_feature", "patch")
    llava_config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        vision_feature_layer=config.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default" if select == "patch" else "full",
        projector_hidden_act="gelu",
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
    )
    return llava_config, tokenizer, vt_folder


def _load_original(folder: Path, config: dict[str, Any], dtype: torch.dtype):
    from transformers import AutoImageProcessor, CLIPVisionModel, LlavaForConditionalGeneration, LlavaProcessor

    llava_config, tokenizer, vt_folder = _original_llava_config(folder, config)
    vision_config = llava_config.vision_config
    vocab = llava_config.text_config.vocab_size

    state = {convert_original_key(k): v for k, v in _read_state_dict(folder).items()
             if "rotary_emb.inv_freq" not in k}
    if not any(k.startswith("model.vision_tower.") for k in state):
        tower = CLIPVisionModel.from_pretrained(vt_folder, dtype=dtype)
        state.update({"model.vision_tower." + k: v for k, v in tower.state_dict().items()})
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        state[key] = _grow_rows(state[key], vocab)
    model, info = LlavaForConditionalGeneration.from_pretrained(
        None, config=llava_config, state_dict=state, dtype=dtype, output_loading_info=True
    )
    if info.get("missing_keys") or info.get("mismatched_keys"):
        # Missing weights would be silently random-initialised: refuse instead.
        raise ValueError(f"original LLaVA checkpoint {folder} does not convert cleanly: "
                         f"missing {sorted(info.get('missing_keys') or [])[:10]}, "
                         f"mismatched {list(info.get('mismatched_keys') or [])[:10]}")

    image_processor = AutoImageProcessor.from_pretrained(vt_folder)
    chat_template = getattr(tokenizer, "chat_template", None)
    if chat_template is None:
        chat_template = LLAVA_CHAT_TEMPLATE
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision_config.patch_size,
        vision_feature_select_strategy=llava_config.vision_feature_select_strategy,
        num_additional_image_tokens=1, chat_template=chat_template,
    )
    return model, processor


# ---------------------------------------------------------------- vision-only loading (scanning)

def select_vision_features(
    vision_tower: torch.nn.Module, pixel_values: torch.Tensor, layer: int, strategy: str
) -> torch.Tensor:
    """Run the vision tower once; return hidden state ``layer`` (B, N, V), CLS dropped for the "default" strategy.

    This is LLaVA's feature selection, shared by `SafeLlava` and the vision-only scan path.
    For CLIP towers the encoder layers after the selected one are skipped for the call
    (LLaVA-1.5 reads layer -2, so the base model itself computes one layer it throws away):
    CLIP's ``last_hidden_state`` is the last layer's raw output, so with the encoder cut it
    is exactly hidden state ``layer``. The module is restored afterwards; do not call this
    on one tower from several threads at once. Other towers run whole.
    """
    encoder = vision_encoder(vision_tower)
    layers = encoder.layers
    keep = layer if layer >= 0 else len(layers) + 1 + layer
    if getattr(vision_tower.config, "model_type", None) == "clip_vision_model" and 0 < keep <= len(layers):
        encoder.layers = layers[:keep]
        try:
            features = vision_tower(pixel_values, return_dict=True).last_hidden_state
        finally:
            encoder.layers = layers
    else:
        features = vision_tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states[keep]
    if strategy == "default":
        features = features[:, 1:]
    return features


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
_ORIGINAL_TOWER_PREFIX = "model.vision_tower.vision_tower."
_ORIGINAL_PROJECTOR_KEYS = {"model.mm_projector.0.": "linear_1.", "model.mm_projector.2.": "linear_2."}


def _strip_prefix(key: str, prefixes) -> str | None:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix):]
    return None


def _read_selected(folder: Path, rename) -> dict[str, torch.Tensor]:
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
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({folder / shard for key, shard in weight_map.items() if rename(key) is not None})
    for file in files:
        with safe_open(str(file), framework="pt") as reader:
            for key in reader.keys():
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

    tower_class = MODEL_MAPPING[type(vision_config)]
    tower, info = tower_class.from_pretrained(None, config=vision_config, state_dict=state, dtype=dtype,
                                              output_loading_info=True)
    if info["missing_keys"]:
        raise ValueError(f"vision tower weights missing from {where}: {sorted(info['missing_keys'])[:5]} ...")
    return tower


def load_vision_parts(
    name_or_path: str | Path,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = None,
) -> VisionParts:
    """Load only the vision tower, the LLaVA projector and the image processor of a LLaVA-1.5 checkpoint.

    The language model's weights are never read: only the tower's and projector's tensors
    are taken from the checkpoint files (HF or original layout). The projector is needed
    for the base fingerprint that ties safety modules to their base.
    """
    from transformers import AutoImageProcessor, CLIPVisionModel, LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    folder = local_folder(name_or_path)
    raw = read_config(folder)
    if is_original_format(raw):
        llava_config, _, vt_folder = _original_llava_config(folder, raw)

        def rename(key: str) -> str | None:
            if key.startswith(_ORIGINAL_TOWER_PREFIX):
                return "tower." + key[len(_ORIGINAL_TOWER_PREFIX):]
            for old, new in _ORIGINAL_PROJECTOR_KEYS.items():
                if key.startswith(old):
                    return "projector." + new + key[len(old):]
            return None

        state = _read_selected(folder, rename)
        tower_state = {k[len("tower."):]: v for k, v in state.items() if k.startswith("tower.")}
        if tower_state:
            tower = _build_tower(llava_config.vision_config, tower_state, dtype, folder)
        else:  # the usual case: the original checkpoints do not hold the tower
            tower = CLIPVisionModel.from_pretrained(vt_folder, dtype=dtype)
        image_processor = AutoImageProcessor.from_pretrained(vt_folder)
    else:
        if raw.get("model_type") != "llava":
            raise ValueError(f"{name_or_path} is a {raw.get('model_type')!r} model, not a LLaVA (model_type 'llava')")
        llava_config = LlavaConfig.from_pretrained(folder)

        def rename(key: str) -> str | None:
            tower_key = _strip_prefix(key, _HF_TOWER_PREFIXES)
            if tower_key is not None:
                return "tower." + tower_key
            projector_key = _strip_prefix(key, _HF_PROJECTOR_PREFIXES)
            return None if projector_key is None else "projector." + projector_key

        state = _read_selected(folder, rename)
        tower_state = {k[len("tower."):]: v for k, v in state.items() if k.startswith("tower.")}
        tower = _build_tower(llava_config.vision_config, tower_state, dtype, folder)
        image_processor = AutoImageProcessor.from_pretrained(folder)

    projector = LlavaMultiModalProjector(llava_config)
    projector_state = {k[len("projector."):]: v for k, v in state.items() if k.startswith("projector.")}
    try:
        projector.load_state_dict(projector_state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"LLaVA projector weights in {folder} do not fit its config: {exc}") from None
    tower.to(device=device, dtype=dtype).eval().requires_grad_(False)
    projector.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return VisionParts(llava_config, tower, projector, image_processor)
