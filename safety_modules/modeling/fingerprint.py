"""A base model's fingerprint: architecture dims + a hash of its frozen LLaVA projector.

Safety modules are trained against one base model's image tokens; the fingerprint
ties them to that base so attaching them to another is a clear error. The hash is
taken over the projector weights rounded to bfloat16, so the same checkpoint
loaded in float32, float16 or bfloat16 gives the same fingerprint.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn


def projector_digest(projector: nn.Module) -> str:
    """Hex digest (16 chars) of a module's parameters, independent of the dtype they were loaded in."""
    digest = hashlib.sha256()
    for name, tensor in sorted(projector.state_dict().items()):
        if tensor.is_meta:
            raise ValueError("cannot fingerprint a projector on the meta device (its weights are not loaded)")
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        data = tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16)
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:16]


def base_fingerprint(llava_config: Any, projector: nn.Module) -> dict[str, Any]:
    """Fingerprint of a LLaVA base: its geometry and the digest of its multimodal projector."""
    vision = llava_config.vision_config
    return {
        "vision_hidden_size": vision.hidden_size,
        "text_hidden_size": llava_config.text_config.hidden_size,
        "num_image_tokens": (vision.image_size // vision.patch_size) ** 2,
        "vision_feature_layer": llava_config.vision_feature_layer,
        "projector_digest": projector_digest(projector),
    }


def describe(fingerprint: dict[str, Any] | None) -> str:
    if not fingerprint:
        return "<none>"
    return (
        f"vision {fingerprint.get('vision_hidden_size')}, text {fingerprint.get('text_hidden_size')}, "
        f"{fingerprint.get('num_image_tokens')} image tokens, layer {fingerprint.get('vision_feature_layer')}, "
        f"projector {fingerprint.get('projector_digest')}"
    )
