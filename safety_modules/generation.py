"""Gated generation: one vision pass per image feeds the safety head and the answer.

For a batch: the vision tower runs once; the safety head scores every sample; the
policy decides allow / hint / refuse per sample; refused samples get the policy's
refusal text without running the language model (``refusal="short_circuit"``), or
are generated with the top-level hint as the reference does (``refusal="generate"``);
the others are generated together, left-padded, from input embeddings in which each
image block is [safety tokens B; image tokens]. A hint goes into the user's turn after
the question, through the processor's chat template, so it sits before the
assistant turn.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .conversation import chat_text
from .images import decode_image
from .policy import SafetyDecision, SafetyPolicy

if TYPE_CHECKING:
    from .wrapper import SafeLlava

logger = logging.getLogger(__name__)

REFUSAL_MODES = ("short_circuit", "generate")


@dataclass
class GatedAnswer:
    """One sample's answer and the gate's decision. ``token_ids`` are the generated ids
    (up to and including the first end-of-sequence token), ``None`` when the language
    model did not run for this sample."""

    text: str
    decision: SafetyDecision
    token_ids: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.text, "decision": self.decision.to_dict()}


@torch.no_grad()
def gated_generate(
    model: "SafeLlava",
    images: Any,
    prompts: str | Sequence[str],
    policy: SafetyPolicy | Sequence[SafetyPolicy] | None = None,
    *,
    refusal: str = "short_circuit",
    inject_safety_tokens: bool = True,
    streamer: Any = None,
    **generation_kwargs: Any,
) -> list[GatedAnswer]:
    """Answer each (image, prompt) pair behind the safety gate; see `SafeLlava.generate`."""
    started = time.perf_counter()
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    processor = model.processor
    if processor is None:
        raise ValueError("this SafeLlava has no processor: generate needs its tokenizer and chat template")
    if refusal not in REFUSAL_MODES:
        raise ValueError(f"refusal must be one of {list(REFUSAL_MODES)}, got {refusal!r}")
    image_token = processor.image_token
    for i, prompt in enumerate(prompts):
        if image_token in prompt:
            raise ValueError(f"prompt {i} contains the image placeholder {image_token!r}; pass the image separately")
    if not isinstance(images, torch.Tensor):
        images = [decode_image(x) if isinstance(x, (str, Path)) else x
                  for x in (images if isinstance(images, (list, tuple)) else [images])]
    pixel_values = model.pixel_values(images)
    batch = pixel_values.shape[0]
    if batch != len(prompts):
        raise ValueError(f"{batch} images for {len(prompts)} prompts")
    if streamer is not None and batch != 1:
        raise ValueError("a streamer can only follow a single request (batch of 1)")
    policies = _policies_for(policy, batch, model)

    features = model.vision_features(pixel_values)  # the only vision pass
    vision_done = time.perf_counter()
    decisions = _score(model, features, prompts, policies)
    scoring_done = time.perf_counter()

    # Who goes through the language model, and with which hint.
    hints: dict[int, str | None] = {}
    for i, decision in enumerate(decisions):
        if decision.action == "allow":
            hints[i] = None
        elif decision.action == "hint" or (refusal == "generate" and decision.hint is not None):
            hints[i] = policies[i].hint_prefix + decision.hint
    outputs: dict[int, list[int]] = {}
    if hints:
        rows = sorted(hints)
        outputs = dict(zip(rows, _generate_rows(model, features[rows], [prompts[i] for i in rows],
                                                [hints[i] for i in rows], inject_safety_tokens, streamer,
                                                generation_kwargs)))
    finished = time.perf_counter()

    tokenizer = processor.tokenizer
    answers = []
    for i, decision in enumerate(decisions):
        ran = i in outputs
        decision.timings = {
            "vision_s": vision_done - started,
            "scoring_s": scoring_done - vision_done,
            "generation_s": finished - scoring_done if ran else 0.0,
            "total_s": finished - started if ran else scoring_done - started,
        }
        if ran:
            text = tokenizer.decode(outputs[i], skip_special_tokens=True).strip()
            answers.append(GatedAnswer(text, decision, outputs[i]))
        else:
            if streamer is not None:
                _stream_text(streamer, tokenizer, decision.refusal)
            answers.append(GatedAnswer(decision.refusal, decision, None))
    return answers


def _policies_for(policy: SafetyPolicy | Sequence[SafetyPolicy] | None, batch: int,
                  model: "SafeLlava") -> list[SafetyPolicy]:
    """One policy per sample: the default, a shared one, or a list (one per sample)."""
    taxonomy = model.config.taxonomy
    if policy is None:
        policy = SafetyPolicy.default(taxonomy)
    policies = list(policy) if isinstance(policy, (list, tuple)) else [policy] * batch
    if len(policies) != batch:
        raise ValueError(f"{len(policies)} policies for {batch} samples")
    for unique in {id(p): p for p in policies}.values():
        unique.check_taxonomy(taxonomy)
    return policies


def _score(model: "SafeLlava", features: torch.Tensor, prompts: list[str],
           policies: list[SafetyPolicy]) -> list[SafetyDecision]:
    """Safety head + policy per sample. Any error while scoring becomes a scoring-failure decision."""
    try:
        head_ids, head_mask = model.head_prompt_inputs(prompts)
        scores = model.classify(features, head_ids, head_mask)
        level_probs, type_probs = scores.level_probs.cpu(), scores.type_probs.cpu()
    except Exception as exc:  # noqa: BLE001 - by design: fail_closed decides what a failure means
        logger.warning("safety scoring failed: %s: %s", type(exc).__name__, exc)
        return [p.on_scoring_error(f"{type(exc).__name__}: {exc}") for p in policies]
    return [p.decide_batch(level_probs[i:i + 1], type_probs[i:i + 1])[0] for i, p in enumerate(policies)]


def _generate_rows(model: "SafeLlava", features: torch.Tensor, prompts: list[str], hints: list[str | None],
                   inject_safety_tokens: bool, streamer: Any, generation_kwargs: dict[str, Any]) -> list[list[int]]:
    """Generate for the given samples in one left-padded batch; return each row's new token ids."""
    processor = model.processor
    tokenizer = processor.tokenizer
    n_image = features.shape[1]
    # The same expansion the processor does: one <image> placeholder per image token.
    texts = [chat_text(processor, p, h).replace(processor.image_token, processor.image_token * n_image)
             for p, h in zip(prompts, hints)]
    enc = tokenizer(texts, padding="longest", padding_side="left", return_tensors="pt")
    image_tokens = model.base.model.multi_modal_projector(features)
    embeds, mask, _ = model.build_inputs_embeds(enc["input_ids"], image_tokens, enc["attention_mask"],
                                                inject_safety_tokens=inject_safety_tokens)
    out = model.base.generate(inputs_embeds=embeds, attention_mask=mask, streamer=streamer, **generation_kwargs)
    eos = generation_kwargs.get("eos_token_id", model.base.generation_config.eos_token_id)
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    rows = []
    for row in out.tolist():
        stop = next((j for j, t in enumerate(row) if t in eos_ids), None)
        rows.append(row if stop is None else row[:stop + 1])
    return rows


def _stream_text(streamer: Any, tokenizer: Any, text: str) -> None:
    """Hand a refusal to a transformers streamer the way `generate` would: prompt (empty), tokens, end."""
    streamer.put(torch.empty((1, 0), dtype=torch.long))
    streamer.put(torch.tensor([tokenizer.encode(text, add_special_tokens=False)]))
    streamer.end()
