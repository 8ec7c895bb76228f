"""LoRA on the base's language model, through peft's functional API (the layers are injected in place).

The adapter is added to, loaded into and saved from the language model module itself: nothing is
swapped in the base (no ``PeftModel`` wrapper), so `SafeLlava`'s doors and the base's own forward keep
working with or without it. transformers' PEFT integration (``add_adapter``, ``disable_adapters``) would
do the same, but needs peft >= 0.22, newer than the peft available here; these are the peft functions
that integration calls.

The saved folder is what ``PeftModel.save_pretrained`` writes for a PEFT-wrapped language model
(``adapter_config.json`` + ``adapter_model.safetensors``, keys prefixed ``base_model.model.``), so
adapters written before this module existed load unchanged, and ``PeftModel.from_pretrained`` on a
llava-hf language model reads ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from torch import nn

from .errors import CheckpointError, load_safetensors

ADAPTER_NAME = "default"
ADAPTER_DIR = "lora_adapter"  # the adapter's folder in a training run's output (stage 2, RL)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_SAVED_PREFIX = "base_model.model."  # PeftModel's key prefix in saved adapters


def lora_config(r: int, alpha: int, dropout: float):
    """LoRA on every linear layer of the language model (its attention and MLP projections)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear")


def has_lora(language_model: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(module, BaseTunerLayer) for module in language_model.modules())


def add_lora(language_model: nn.Module, r: int, alpha: int, dropout: float) -> None:
    """A fresh, trainable LoRA adapter (float32 weights whatever the base's dtype, as ``get_peft_model`` makes)."""
    _inject(language_model, lora_config(r, alpha, dropout))


def _inject(language_model: nn.Module, config) -> None:
    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import cast_adapter_dtype

    if has_lora(language_model):
        raise ValueError("the language model already has a LoRA adapter")
    inject_adapter_in_model(config, language_model, ADAPTER_NAME)
    cast_adapter_dtype(language_model, ADAPTER_NAME)
    # New modules start in train mode: give the adapter's (its dropout) the language model's mode.
    language_model.train(language_model.training)


def load_lora(language_model: nn.Module, folder: str | Path) -> None:
    """Attach a saved adapter, frozen (inference). Every adapter tensor must be in the file, and nothing else."""
    from peft import LoraConfig, set_peft_model_state_dict

    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"LoRA adapter folder {folder} has no {name}")
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except (ValueError, TypeError, OSError) as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not a LoRA adapter config: {exc}") from None
    state = {k.removeprefix(_SAVED_PREFIX): v for k, v in load_safetensors(folder / WEIGHTS_FILE).items()}
    _inject(language_model, config)
    result: Any = set_peft_model_state_dict(language_model, state, ADAPTER_NAME)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise CheckpointError(
            f"LoRA adapter {folder} does not fit this language model: "
            f"unexpected {sorted(result.unexpected_keys)[:5]}, missing {sorted(missing)[:5]}"
        )
    language_model.requires_grad_(False)


def save_lora(language_model: nn.Module, folder: str | Path) -> Path:
    """Write the adapter (config + weights, in ``PeftModel``'s layout) into ``folder``."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    if not has_lora(language_model):
        raise ValueError("the language model has no LoRA adapter to save")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(language_model, adapter_name=ADAPTER_NAME)
    cast(Any, language_model).peft_config[ADAPTER_NAME].save_pretrained(str(folder))
    tensors = {_SAVED_PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    return folder


@contextmanager
def lora_disabled(language_model: nn.Module) -> Iterator[None]:
    """The language model without its adapter inside the block (the RL reference policy), with it again after."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [module for module in language_model.modules() if isinstance(module, BaseTunerLayer)]
    # peft's enable_adapters(True) also makes the adapter trainable: a frozen one must stay frozen.
    trainable = {param: param.requires_grad for layer in layers for param in layer.parameters()}
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for param, requires_grad in trainable.items():
            param.requires_grad_(requires_grad)
