"""`Gate`: score, decide, generate behind a safety policy, on top of a `SafeLlava`.

For a batch: identical images share one preprocessing and one vision pass (grouped by
content on the CPU, see `SafeLlava.encode_images`); the safety head scores every sample;
the policy decides allow / hint / refuse per sample; refused samples get the policy's
refusal text without running the language model (``refusal="short_circuit"``), or are
generated with the top-level hint as the reference does (``refusal="generate"``); the
others are generated together, left-padded, from input embeddings in which each image
block is [safety tokens B; image tokens]. A hint goes into the user's turn after the
question, through the chat template, so it sits before the assistant turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError, InputError
from ..images import load_images
from ..modeling.llava.conversation import Prompt, chat_text, prompt_turns, user_text
from ..modeling.safe_llava import SafeLlava, SafetyScores
from ..policy import SafetyDecision, SafetyPolicy
from .answer import GatedAnswer
from .language import generate_rows, stream_text
from .limits import check_prompt_tokens, context_length

logger = logging.getLogger(__name__)

REFUSAL_MODES = ("short_circuit", "generate")

Policies = SafetyPolicy | Sequence[SafetyPolicy] | None
Groups = Sequence[int] | torch.Tensor | None


class Gate:
    """The safety gate around one `SafeLlava`: its settings are fixed at construction.

    ``policy``: the gate's `SafetyPolicy` (``None``: `SafetyPolicy.default` for the model's
    taxonomy); a call can pass its own (one for all samples or one per sample).
    ``refusal="short_circuit"`` answers refused samples with the policy's refusal text without
    running the language model; ``"generate"`` generates them with the top-level hint (the
    reference's behaviour). ``inject_safety_tokens=False`` leaves safety tokens B out of the LLM
    input (with an allow-all policy this is exactly the base model's own output).

    ``images`` in every method: PIL images, arrays, file paths, or a pixel tensor (float: pixel
    values; uint8: raw images). Identical PIL images / arrays share one vision pass (a content
    hash on the CPU, never a comparison of pixels on the device); for a tensor pass ``groups``
    (per-sample labels, equal = identical image) to share passes.

    ``prompts`` in every method: questions, or conversations (`conversation.Prompt`: an optional
    system turn, earlier turns, the question last); the safety head reads the user turns' text.
    ``max_prompt_tokens`` (default: the model's context length) caps the language model's input
    (text, image and safety tokens): a longer prompt raises `limits.PromptTooLong` before any model work.
    """

    def __init__(
        self,
        model: SafeLlava,
        policy: SafetyPolicy | None = None,
        refusal: str = "short_circuit",
        inject_safety_tokens: bool = True,
        max_prompt_tokens: int | None = None,
    ) -> None:
        if refusal not in REFUSAL_MODES:
            raise ConfigError(f"refusal must be one of {list(REFUSAL_MODES)}, got {refusal!r}")
        taxonomy = model.config.taxonomy
        policy = policy if policy is not None else SafetyPolicy.default(taxonomy)
        policy.check_taxonomy(taxonomy)
        self.model = model
        self.policy = policy
        self.refusal = refusal
        self.inject_safety_tokens = inject_safety_tokens
        self.max_prompt_tokens = max_prompt_tokens or context_length(model.base.config)

    def __repr__(self) -> str:
        return (
            f"Gate(policy={self.policy.name!r}, refusal={self.refusal!r}, "
            f"inject_safety_tokens={self.inject_safety_tokens})"
        )

    # ------------------------------------------------------------------ score / decide

    @torch.no_grad()
    def score(self, images: Any, prompts: Sequence[Prompt] | None = None, *, groups: Groups = None) -> SafetyScores:
        """The safety head's scores (one vision pass, no language model); ``prompts`` optional."""
        texts = None if prompts is None else [user_text(p) for p in prompts]
        if texts is not None:
            check_prompt_tokens(self.model.processor.tokenizer, texts, self.max_prompt_tokens)
        return self.model.assess(images, texts, groups=groups)

    @torch.no_grad()
    def decide(
        self, images: Any, prompts: Prompt | Sequence[Prompt], policies: Policies = None, *, groups: Groups = None
    ) -> list[SafetyDecision]:
        """The gate's decision per (image, prompt), without the language model.

        A failure while scoring becomes each policy's scoring-failure decision (``fail_closed``).
        """
        started = time.perf_counter()
        images, prompts, policies = self._requests(images, prompts, policies)
        check_prompt_tokens(self.model.processor.tokenizer, [user_text(p) for p in prompts], self.max_prompt_tokens)
        features = self.model.encode_images(images, groups)
        vision_done = time.perf_counter()
        decisions = self._decide(features, prompts, policies)
        scoring_done = time.perf_counter()
        for decision in decisions:
            decision.timings = _timings(started, vision_done, scoring_done)
        return decisions

    # ------------------------------------------------------------------ generate

    @torch.no_grad()
    def generate(
        self,
        images: Any,
        prompts: Prompt | Sequence[Prompt],
        policies: Policies = None,
        *,
        streamer: Any = None,
        groups: Groups = None,
        **generation_kwargs: Any,
    ) -> list[GatedAnswer]:
        """Answer each (image, prompt) behind the gate; one `GatedAnswer` (text + decision) per sample.

        ``prompts``: the users' questions or conversations (the chat format is applied here).
        ``streamer``: a transformers streamer, single requests only. Other keyword arguments go
        to the base model's ``generate``. Each decision's ``timings`` hold ``vision_s``,
        ``scoring_s``, ``generation_s`` (0 when the language model did not run) and ``total_s``;
        each answer's ``prompt_tokens`` is the language model's input length (with the hint).
        """
        started = time.perf_counter()
        model = self.model
        images, prompts, policies = self._requests(images, prompts, policies)
        if streamer is not None and len(prompts) != 1:
            raise ValueError("a streamer can only follow a single request (batch of 1)")
        self.prompt_tokens(prompts)  # refuse too long prompts before any model work

        features = model.encode_images(images, groups)  # the only vision pass
        vision_done = time.perf_counter()
        decisions = self._decide(features, prompts, policies)
        scoring_done = time.perf_counter()

        # Who goes through the language model, and with which hint.
        hints: dict[int, str | None] = {}
        for i, decision in enumerate(decisions):
            if decision.action == "allow":
                hints[i] = None
            elif (hint := policies[i].prompt_hint(decision, self.refusal == "generate")) is not None:
                hints[i] = hint
        outputs: dict[int, list[int]] = {}
        if hints:
            rows = sorted(hints)
            chosen = features if len(rows) == len(prompts) else features[rows]  # no copy when all run
            generated = generate_rows(
                model,
                chosen,
                [prompts[i] for i in rows],
                [hints[i] for i in rows],
                self.inject_safety_tokens,
                streamer,
                generation_kwargs,
            )
            outputs = dict(zip(rows, generated))
        finished = time.perf_counter()
        # Counted, not checked: the limit is on what the caller sent; the gate's hint may add a few tokens.
        lengths = self.prompt_tokens(prompts, [hints.get(i) for i in range(len(prompts))], check=False)

        tokenizer = model.processor.tokenizer
        answers = []
        for i, decision in enumerate(decisions):
            ran = i in outputs
            decision.timings = _timings(started, vision_done, scoring_done, finished if ran else None)
            if ran:
                text = tokenizer.decode(outputs[i], skip_special_tokens=True).strip()
                answers.append(GatedAnswer(text, decision, outputs[i], lengths[i]))
            else:
                refusal = decision.refusal
                assert refusal is not None, "only refused samples skip the language model, with their refusal text"
                if streamer is not None:
                    stream_text(streamer, tokenizer, refusal)
                answers.append(GatedAnswer(refusal, decision, None, lengths[i]))
        return answers

    # ------------------------------------------------------------------ helpers

    def prompt_tokens(
        self, prompts: Sequence[Prompt], hints: Sequence[str | None] | None = None, check: bool = True
    ) -> list[int]:
        """The language model's input length per row (chat text with the hint, image and safety tokens);
        with ``check``, raises `limits.PromptTooLong` over ``max_prompt_tokens``."""
        model = self.model
        hints = hints if hints is not None else [None] * len(prompts)
        image_tokens = model.config.num_image_tokens  # the image block, as the modules were built for it
        safety_tokens = model.safety.llm_tokens.shape[1] if self.inject_safety_tokens else 0
        texts = [chat_text(model.processor, p, h) for p, h in zip(prompts, hints)]
        # The text holds one <image> placeholder; the model sees it as the image block.
        extra = image_tokens - 1 + safety_tokens
        limit = self.max_prompt_tokens if check else None
        return check_prompt_tokens(model.processor.tokenizer, texts, limit, extra)

    def _requests(
        self, images: Any, prompts: Prompt | Sequence[Prompt], policies: Policies
    ) -> tuple[Any, list[Prompt], list[SafetyPolicy]]:
        """Check a request: (images with paths decoded, prompts as a list without image placeholders, one policy per
        sample)."""
        if self.model.processor is None:
            raise ValueError("this SafeLlava has no processor: the gate needs its tokenizer and chat template")
        prompts = [prompts] if isinstance(prompts, str) or _is_conversation(prompts) else list(prompts)
        # The chat template places the one image itself; a placeholder in the text is a client mistake.
        image_token = self.model.processor.image_token
        for i, prompt in enumerate(prompts):
            if any(image_token in turn["value"] for turn in prompt_turns(prompt)):
                raise InputError(
                    f"prompt {i} contains the image placeholder {image_token!r}; pass the image separately"
                )
        if not isinstance(images, torch.Tensor):
            images = load_images(images)
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        return images, prompts, self._policies_for(policies, len(prompts))

    def _policies_for(self, policies: Policies, batch: int) -> list[SafetyPolicy]:
        """One policy per sample: the gate's, a shared one, or a list (one per sample)."""
        if policies is None:
            return [self.policy] * batch
        if isinstance(policies, SafetyPolicy):
            policies = [policies] * batch
        policies = list(policies)
        if len(policies) != batch:
            raise ValueError(f"{len(policies)} policies for {batch} samples")
        taxonomy = self.model.config.taxonomy
        for distinct in {id(p): p for p in policies}.values():
            distinct.check_taxonomy(taxonomy)
        return policies

    def _decide(self, features: torch.Tensor, prompts: list[str], policies: list[SafetyPolicy]) -> list[SafetyDecision]:
        """Safety head + policy per sample. Any error while scoring becomes a scoring-failure decision."""
        model = self.model
        try:
            head_ids, head_mask = model.head_prompt_inputs([user_text(p) for p in prompts])
            scores = model.classify(features, head_ids, head_mask)
            level_probs, type_probs = scores.level_probs.cpu(), scores.type_probs.cpu()
        except Exception as exc:  # noqa: BLE001 - by design: fail_closed decides what a failure means
            logger.warning("safety scoring failed: %s: %s", type(exc).__name__, exc)
            return [p.on_scoring_error(f"{type(exc).__name__}: {exc}") for p in policies]
        rows_by_policy: dict[int, list[int]] = {}
        for i, policy in enumerate(policies):
            rows_by_policy.setdefault(id(policy), []).append(i)
        decisions: dict[int, SafetyDecision] = {}
        for rows in rows_by_policy.values():
            decisions.update(zip(rows, policies[rows[0]].decide_batch(level_probs[rows], type_probs[rows])))
        return [decisions[i] for i in range(len(policies))]


def _is_conversation(prompts: Any) -> bool:
    """True for one conversation (a list of turn mappings), False for a list of prompts."""
    return isinstance(prompts, (list, tuple)) and bool(prompts) and isinstance(prompts[0], dict)


def _timings(
    started: float, vision_done: float, scoring_done: float, generated: float | None = None
) -> dict[str, float]:
    """A decision's ``timings`` from the clock; ``generated``: when the language model finished (None: not run)."""
    finished = scoring_done if generated is None else generated
    return {
        "vision_s": vision_done - started,
        "scoring_s": scoring_done - vision_done,
        "generation_s": finished - scoring_done,
        "total_s": finished - started,
    }
