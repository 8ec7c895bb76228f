"""Helpers shared by the training and RL tests."""

from __future__ import annotations

import hashlib

import torch


def base_digest(model: torch.nn.Module) -> str:
    """A hash of every non-LoRA tensor, named as without peft (equal after training iff the base stayed frozen)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        digest.update(name.replace("base_model.model.", "").replace(".base_layer", "").encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
