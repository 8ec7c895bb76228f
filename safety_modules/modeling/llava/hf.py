"""`load_base`: a frozen LLaVA-1.5 and its processor, from an HF-layout folder (``llava-hf/...``) or an original one.

Both kinds come back as ``transformers.LlavaForConditionalGeneration`` and ``LlavaProcessor``.
HF bases keep their own processor (llava-hf chat template, CLIP preprocessing); original
checkpoints are converted by `safety_modules.modeling.llava.original`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .common import (
    check_llava,
    is_original_format,
    local_folder,
    read_config,
    resolve_device,
    resolve_dtype,
)
from .original import load_original


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
        model, processor = load_original(folder, config, dtype)
    else:
        check_llava(config, name_or_path)
        model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        processor = AutoProcessor.from_pretrained(folder)
    model.to(device).eval().requires_grad_(False)
    return model, processor
