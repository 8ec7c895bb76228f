"""`GatedAnswer`: what the gate returns for one sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..policy import SafetyDecision


@dataclass
class GatedAnswer:
    """One sample's answer and the gate's decision. ``token_ids`` are the generated ids
    (up to and including the first end-of-sequence token), ``None`` when the language
    model did not run for this sample. ``prompt_tokens``: the language model's input length (text,
    image and safety tokens, with the hint), whether or not it ran."""

    text: str
    decision: SafetyDecision
    token_ids: list[int] | None = None
    prompt_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.text, "decision": self.decision.to_dict()}
