"""`SafetyScores`: the safety head's logits for a batch and the (calibrated) probabilities read from them.

A head fitted by `safevlm calibrate` carries temperatures in its `SafetyConfig`
(``level_temperature``, ``type_temperature``: one number; a list of one per class, written by
the first version of calibrate, is still read). Probabilities
are ``softmax(logits / T)``; without temperatures they are ``softmax(logits)``, exactly as an
uncalibrated head gives them. The logits themselves are never scaled, so training and
re-calibration always see the raw head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

Temperature = float | Sequence[float] | None


def scaled_softmax(logits: torch.Tensor, temperature: Temperature) -> torch.Tensor:
    """``softmax(logits / T)`` in float32 (T: None = 1, a number, or one per class along the last axis)."""
    logits = logits.float()
    if temperature is not None:
        logits = logits / torch.as_tensor(temperature, dtype=torch.float32, device=logits.device)
    return logits.softmax(-1)


@dataclass
class SafetyScores:
    """The safety head's output for a batch: raw logits, the temperatures to read them with, and probabilities."""

    level_logits: torch.Tensor
    type_logits: torch.Tensor
    level_temperature: Temperature = None
    type_temperature: Temperature = None

    @property
    def level_probs(self) -> torch.Tensor:
        """(B, L) level probabilities, calibrated when the head has a level temperature."""
        return scaled_softmax(self.level_logits, self.level_temperature)

    @property
    def type_probs(self) -> torch.Tensor:
        """(B, T) type probabilities, calibrated when the head has a type temperature."""
        return scaled_softmax(self.type_logits, self.type_temperature)

    @property
    def calibrated(self) -> bool:
        return self.level_temperature is not None or self.type_temperature is not None

    def with_temperatures(self, level: Temperature, type_: Temperature) -> SafetyScores:
        """The same logits read with other temperatures (``None`` = uncalibrated)."""
        return replace(self, level_temperature=level, type_temperature=type_)

    def uncalibrated(self) -> SafetyScores:
        """The same logits read without temperatures: the raw head's probabilities."""
        return self.with_temperatures(None, None)

    def cpu(self) -> SafetyScores:
        return replace(self, level_logits=self.level_logits.cpu(), type_logits=self.type_logits.cpu())

    @classmethod
    def cat(cls, parts: Sequence[SafetyScores]) -> SafetyScores:
        """Batches of one head concatenated (they must share its temperatures)."""
        if not parts:
            raise ValueError("no scores to concatenate")
        first = parts[0]
        return replace(
            first,
            level_logits=torch.cat([p.level_logits for p in parts]),
            type_logits=torch.cat([p.type_logits for p in parts]),
        )
