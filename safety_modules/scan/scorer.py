"""The fast path: vision tower + safety modules, never the language model.

`prepare` turns one `Item` into pixel values (or an error) and runs in DataLoader
workers or Ray tasks; `VisionScorer.score` runs the batched vision pass and the
image-only safety head; `result_rows` builds the output rows shared by both engines.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from ..backbone import load_vision_parts, resolve_device, resolve_dtype, select_vision_features, vision_encoder
from ..images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from ..modeling import SafetyModules, base_fingerprint
from ..policy import SafetyPolicy
from ..taxonomy import Taxonomy
from ..wrapper import SafetyScores
from .readers import Item, ItemError, load_bytes

# CLIP's processor resizes the short side to 336 px and keeps the centre square, so only
# the central part of a very long image is ever seen. Cropping such images to this aspect
# ratio first gives the same view without resizing, say, a 1 x 20000 strip to 336 x 6.7M px.
MAX_ASPECT_RATIO = 8.0


def bound_aspect(img: Image.Image, max_ratio: float = MAX_ASPECT_RATIO) -> Image.Image:
    """Centre-crop the long side so that long/short <= ``max_ratio`` (a no-op for ordinary images)."""
    width, height = img.size
    short, long_ = min(width, height), max(width, height)
    if long_ <= short * max_ratio:
        return img
    keep = max(1, int(short * max_ratio))
    if width > height:
        left = (width - keep) // 2
        return img.crop((left, 0, left + keep, height))
    top = (height - keep) // 2
    return img.crop((0, top, width, top + keep))


def prepare(item: Item, image_processor: Any, max_pixels: int = DEFAULT_MAX_PIXELS
            ) -> tuple[torch.Tensor | None, tuple[str, str] | None]:
    """Read, decode and preprocess one item: ``(pixel_values (3, H, W), None)`` or ``(None, (kind, message))``."""
    try:
        image = bound_aspect(decode_image(load_bytes(item), max_pixels=max_pixels))
        pixels = image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        return pixels, None
    except (ItemError, ImageDecodeError) as exc:
        return None, (exc.kind, str(exc).split(": ", 1)[-1])
    except Exception as exc:  # one odd file must not stop a corpus-wide scan; it is recorded, not hidden
        return None, ("preprocess_failed", f"{type(exc).__name__}: {exc}")


def drop_unused_layers(vision_tower: torch.nn.Module, feature_layer: int) -> int:
    """Cut the tower's encoder after the layer whose output LLaVA selects; return that output's index.

    LLaVA-1.5 reads layer -2, so the last encoder layer's work (and weights) would be wasted.
    """
    encoder = vision_encoder(vision_tower)
    layers = encoder.layers
    index = feature_layer if feature_layer >= 0 else len(layers) + 1 + feature_layer
    encoder.layers = layers[:index]
    return index


class VisionScorer:
    """The vision tower (cut after the selected layer) and the safety modules of one base, ready to score batches."""

    def __init__(self, vision_tower: torch.nn.Module, safety: SafetyModules, llava_config: Any,
                 image_processor: Any, fingerprint: dict[str, Any]) -> None:
        self.safety = safety
        self.llava_config = llava_config
        self.image_processor = image_processor
        self.fingerprint = fingerprint
        self.feature_layer = drop_unused_layers(vision_tower, llava_config.vision_feature_layer)
        self.vision_tower = vision_tower

    @classmethod
    def from_pretrained(cls, base: str | Path, safety: str | Path, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = "auto") -> "VisionScorer":
        """Load the vision parts of ``base`` and the safety modules, checking they belong together."""
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        parts = load_vision_parts(base, dtype=dtype, device=device)
        modules = SafetyModules.from_pretrained(safety)
        # Same check as SafeLlava: the modules' fingerprint must be this base's.
        fingerprint = base_fingerprint(parts.config, parts.projector)
        modules.check_base(fingerprint)
        modules.to(device=device, dtype=dtype).eval().requires_grad_(False)
        # The LLaVA projector was needed only for the fingerprint; the scan never uses it.
        return cls(parts.vision_tower, modules, parts.config, parts.image_processor, fingerprint)

    @property
    def device(self) -> torch.device:
        return self.safety.device

    @property
    def taxonomy(self):
        return self.safety.config.taxonomy

    @torch.no_grad()
    def score(self, pixel_values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, H, W) pixels -> level and type probabilities, float32 arrays (B, L) and (B, T)."""
        features = select_vision_features(self.vision_tower, pixel_values.to(self.device, self.safety.dtype),
                                          self.feature_layer, self.llava_config.vision_feature_select_strategy)
        scores: SafetyScores = self.safety.score(features)  # calibrated when the head has temperatures
        return scores.level_probs.cpu().numpy(), scores.type_probs.cpu().numpy()


@dataclass
class Flagger:
    """Decides ``flagged`` from the probabilities; ``description`` goes into the manifest."""

    flag: Callable[[np.ndarray, np.ndarray], np.ndarray]
    description: dict[str, Any]


def load_flagger(policy_path: str | None, taxonomy: Taxonomy) -> Flagger:
    """The operator's policy (``--policy YAML``, else `SafetyPolicy.default`) as a batch flagging rule.

    An item is flagged when the policy's decision for it is not ``allow`` (hint or refuse).
    """
    policy = SafetyPolicy.from_yaml(policy_path, taxonomy) if policy_path else SafetyPolicy.default(taxonomy)
    rules = {name: dataclasses.asdict(rule) for name, rule in policy.rules.items()}
    description = {"name": policy.name, "mode": policy.mode, "source": str(policy_path or "default"), "rules": rules}

    def flag(level_probs: np.ndarray, type_probs: np.ndarray) -> np.ndarray:
        return np.asarray(policy.flag_batch(level_probs, type_probs), dtype=bool)

    return Flagger(flag, description)


def result_rows(records: list[dict[str, Any]], pixels: list[torch.Tensor | None],
                errors: list[tuple[str, str] | None], scorer: VisionScorer, flagger: Flagger) -> list[dict[str, Any]]:
    """Output rows for one batch. ``records`` carry ``index``, ``id`` and ``source``; rows keep their order."""
    ok = [i for i, p in enumerate(pixels) if p is not None]
    scores: dict[int, tuple[np.ndarray, np.ndarray, bool]] = {}
    if ok:
        level_probs, type_probs = scorer.score(torch.stack([pixels[i] for i in ok]))
        flags = flagger.flag(level_probs, type_probs)
        scores = {i: (level_probs[n], type_probs[n], bool(flags[n])) for n, i in enumerate(ok)}
    tax = scorer.taxonomy
    rows = []
    for i, record in enumerate(records):
        row = {"index": record["index"], "id": record["id"], "source": record["source"],
               "error": None, "error_kind": None, "level": None, "type": None, "flagged": None}
        if i in scores:
            level_p, type_p, flagged = scores[i]
            row.update({f"p_{name}": float(p) for name, p in zip(tax.types, type_p)})
            row.update({f"p_level_{name}": float(p) for name, p in zip(tax.levels, level_p)})
            row.update(level=tax.levels[int(level_p.argmax())], type=tax.types[int(type_p.argmax())], flagged=flagged)
        else:
            kind, message = errors[i]
            row.update(error=f"{kind}: {message}", error_kind=kind)
        rows.append(row)
    return rows
