"""The language-model side of the gate: batched generation from [safety tokens B; image tokens] embeddings."""

from __future__ import annotations

from typing import Any

import torch

from ..conversation import chat_text
from ..wrapper import SafeLlava


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
    processor = model.processor
    tokenizer = processor.tokenizer
    n_image = features.shape[1]
    # The same expansion the processor does: one <image> placeholder per image token.
    texts = [
        chat_text(processor, p, h).replace(processor.image_token, processor.image_token * n_image)
        for p, h in zip(prompts, hints)
    ]
    enc = tokenizer(texts, padding="longest", padding_side="left", return_tensors="pt")
    image_tokens = model.base.model.multi_modal_projector(features)
    embeds, mask, _ = model.build_inputs_embeds(
        enc["input_ids"], image_tokens, enc["attention_mask"], inject_safety_tokens=inject_safety_tokens
    )
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
