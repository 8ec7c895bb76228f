"""The language-model side of the gate: batched generation from [safety tokens B; image tokens] embeddings."""

from __future__ import annotations

from typing import Any

import torch

from ..modeling.safe_llava import SafeLlava


def generate_rows(
    model: SafeLlava,
    features: torch.Tensor,
    prompts: list[str],
    hints: list[str | None],
    inject_safety_tokens: bool,
    streamer: Any,
    generation_kwargs: dict[str, Any],
) -> list[list[int]]:
    """Generate for the given samples in one left-padded batch; return each row's new token ids
    (cut after the first end-of-sequence token)."""
    embeds, mask = model.prompt_embeds(features, prompts, hints, inject_safety_tokens)
    out = model.base.generate(inputs_embeds=embeds, attention_mask=mask, streamer=streamer, **generation_kwargs)
    eos = generation_kwargs.get("eos_token_id", model.base.generation_config.eos_token_id)
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    rows = []
    for row in out.tolist():
        stop = next((j for j, t in enumerate(row) if t in eos_ids), None)
        rows.append(row if stop is None else row[: stop + 1])
    return rows


def stream_text(streamer: Any, tokenizer: Any, text: str) -> None:
    """Hand a refusal to a transformers streamer the way `generate` would: prompt (empty), tokens, end."""
    streamer.put(torch.empty((1, 0), dtype=torch.long))
    streamer.put(torch.tensor([tokenizer.encode(text, add_special_tokens=False)]))
    streamer.end()
