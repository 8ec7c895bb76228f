"""The fast path: vision tower + safety modules, never the language model.

`VisionScorer.score_uint8` takes a uint8 batch (as the workers prepare it), normalises it on
the model's device, runs the vision tower up to the layer LLaVA reads and the image-only safety
head; `load_flagger` turns the operator's policy into a batch flagging rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..modeling import SafetyModules, base_fingerprint
from ..modeling.llava import (
    load_vision_parts,
    resolve_device,
    resolve_dtype,
    select_vision_features,
)
from ..modeling.scores import SafetyScores
from ..policy import SafetyPolicy
from ..taxonomy import Taxonomy
from .pixels import PixelSpec, normalize


class VisionScorer:
    """The vision tower and the safety modules of one base, ready to score batches.

    The tower is never modified: `select_vision_features` runs it only up to the layer LLaVA reads.
    """

    def __init__(
        self,
        vision_tower: torch.nn.Module,
        safety: SafetyModules,
        llava_config: Any,
        image_processor: Any,
        fingerprint: dict[str, Any],
    ) -> None:
        self.safety = safety
        self.llava_config = llava_config
        self.image_processor = image_processor
        self.pixel_spec = PixelSpec.from_processor(image_processor)
        self.fingerprint = fingerprint
        self.vision_tower = vision_tower

    @classmethod
    def from_pretrained(
        cls,
        base: str | Path,
        safety: str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = "auto",
    ) -> VisionScorer:
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
    def probabilities(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (B, 3, H, W) pixels -> level and type probabilities (B, L), (B, T), on the model's device."""
        features = select_vision_features(
            self.vision_tower,
            pixel_values.to(self.device, self.safety.dtype),
            self.llava_config.vision_feature_layer,
            self.llava_config.vision_feature_select_strategy,
        )
        scores: SafetyScores = self.safety.score(features)  # calibrated when the head has temperatures
        return scores.level_probs, scores.type_probs

    def score(self, pixel_values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Normalised (B, 3, H, W) pixels -> level and type probabilities, float32 arrays (B, L) and (B, T)."""
        level_probs, type_probs = self.probabilities(pixel_values)
        return level_probs.float().cpu().numpy(), type_probs.float().cpu().numpy()

    def probabilities_uint8(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, 3, H, W) from the workers (any device) -> probabilities on the model's device.

        The copy to the device is asynchronous when ``pixels`` is in pinned memory; rescale and
        normalisation run on the device.
        """
        on_device = pixels.to(self.device, non_blocking=True)
        return self.probabilities(normalize(on_device, self.pixel_spec, self.safety.dtype))


@dataclass
class Flagger:
    """Decides ``flagged`` from the probabilities; ``description`` goes into the manifest."""

    flag: Callable[[np.ndarray, np.ndarray], np.ndarray]
    description: dict[str, Any]


def load_flagger(policy_path: str | None, taxonomy: Taxonomy) -> Flagger:
    """The operator's policy (``--policy``, read by `SafetyPolicy.load`) as a batch flagging rule.

    An item is flagged when the policy's decision for it is not ``allow`` (hint or refuse).
    """
    policy = SafetyPolicy.load(policy_path, taxonomy)
    rules = {name: dataclasses.asdict(rule) for name, rule in policy.rules.items()}
    description = {"name": policy.name, "mode": policy.mode, "source": str(policy_path or "default"), "rules": rules}

    def flag(level_probs: np.ndarray, type_probs: np.ndarray) -> np.ndarray:
        return np.asarray(policy.flag_batch(level_probs, type_probs), dtype=bool)

    return Flagger(flag, description)
