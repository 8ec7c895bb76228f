"""The server's only door into the model: score + decide, and gated generation.

Everything the server does with the model goes through a runner, and every runner
call is made from the batching loop's single thread (see `batching.Batcher`).

The full model is driven through the `Gate` (score, decide, generate live there, not
here); the vision-only runner (proxy mode) uses `VisionScorer` + `SafetyPolicy.decide_batch`,
since the gate needs the language model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..gate import Gate, GatedAnswer
from ..gate.limits import check_prompt_tokens
from ..gate.vision_scorer import VisionScorer
from ..images import bound_aspect
from ..modeling.llava.conversation import Prompt, user_text
from ..modeling.safe_llava import SafeLlava
from ..policy import SafetyDecision, SafetyPolicy
from ..taxonomy import Taxonomy


@dataclass(frozen=True)
class Sampling:
    """Generation settings of one chat request; requests generated together share them (hashable)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    def generation_kwargs(self, tokenizer: Any) -> dict[str, Any]:
        """Keyword arguments for transformers' ``generate`` (temperature 0 means greedy)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_tokens}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs["do_sample"] = False
        if self.stop:
            kwargs.update(stop_strings=list(self.stop), tokenizer=tokenizer)
        return kwargs


TEXT_REFUSAL = "I'm sorry, but I can't help with this request: it appears to involve {type}."


def text_only_policy(policy: SafetyPolicy) -> SafetyPolicy:
    """The policy for requests without an image: its refusals that speak of an image ("the image appears
    to contain ...") say instead that the request appears to involve the risk; everything else is the same."""
    return policy.with_refusals(
        {t: TEXT_REFUSAL if "image" in text.lower() else text for t, text in policy.refusals.items()}
    )


class ModelRunner:
    """What the server needs from a model. Subclasses: `LlavaRunner` (full model), `VisionRunner` (proxy)."""

    #: whether the safety head reads the prompt text (it needs the language model's embeddings)
    scores_text: bool = False
    #: whether `generate` can run here (False in proxy mode: the language model is not loaded)
    can_generate: bool = False

    def __init__(self, policy: SafetyPolicy, image_processor: Any, tokenizer: Any = None) -> None:
        self.policy = policy
        self.text_policy = text_only_policy(policy)
        self.image_processor = image_processor
        self.tokenizer = tokenizer  # decodes streamed tokens; None where nothing is generated

    @property
    def taxonomy(self) -> Taxonomy:
        return self.policy.taxonomy

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One decoded image -> pixel values (3, H, W). Thread-safe: runs in request threads, not the loop.

        Very long images are centre-cropped to the aspect ratio the processor can see
        (`bound_aspect`), so a 1 x 20000 strip is not resized to gigapixels.
        """
        return self.image_processor(images=[bound_aspect(image)], return_tensors="pt")["pixel_values"][0]

    def policies(self, text_only: Sequence[bool]) -> list[SafetyPolicy]:
        """The policy per row: `text_policy` for rows without an image."""
        return [self.text_policy if t else self.policy for t in text_only]

    def prompt_problem(self, prompt: str) -> str | None:
        """Why this prompt cannot be answered here, or None."""
        return None

    def check_length(self, prompt: Prompt, chat: bool) -> None:
        """Raise `limits.PromptTooLong` for a prompt over the limit: the language model's whole input for a
        chat, the text the head reads for a moderation (runners without a tokenizer read no text)."""

    def score_and_decide(
        self, pixels: torch.Tensor, prompts: Sequence[Prompt], text_only: Sequence[bool]
    ) -> list[SafetyDecision]:
        """The policy's decision for each (image, prompt); ``""`` is no text."""
        raise NotImplementedError

    def generate(
        self,
        pixels: torch.Tensor,
        prompts: Sequence[Prompt],
        sampling: Sampling,
        text_only: Sequence[bool],
        streamer: Any = None,
        stopping_criteria: Any = None,
    ) -> list[GatedAnswer]:
        """Gated answers for (image, prompt) pairs that share ``sampling`` (``stopping_criteria``: extra
        transformers stopping criteria, e.g. a closed stream)."""
        raise NotImplementedError(f"{type(self).__name__} cannot generate (proxy mode: the upstream answers)")

    def hint_text(self, decision: SafetyDecision) -> str | None:
        """The text the gate adds to the user's turn for this decision (None when it adds none);
        used to place the hint in a request forwarded upstream."""
        return self.policy.prompt_hint(decision)


class LlavaRunner(ModelRunner):
    """The full `SafeLlava`: the head reads image and prompt, and answers are generated here."""

    scores_text = True
    can_generate = True

    def __init__(self, model: SafeLlava, policy: SafetyPolicy, max_prompt_tokens: int | None = None) -> None:
        policy.check_taxonomy(model.config.taxonomy)
        super().__init__(policy, model.processor.image_processor, model.processor.tokenizer)
        self.model = model
        self.gate = Gate(model, policy, max_prompt_tokens=max_prompt_tokens)
        self.max_prompt_tokens = self.gate.max_prompt_tokens
        self.image_token = model.processor.image_token

    @classmethod
    def load(
        cls,
        base: str | Path,
        safety: str | Path | None,
        policy_path: str | Path | None = None,
        lora: str | Path | None = None,
        device: str | None = None,
        dtype: str = "auto",
        max_prompt_tokens: int | None = None,
        allow_unverified_base: bool = False,
    ) -> LlavaRunner:
        model = SafeLlava.from_pretrained(
            base, safety, dtype=dtype, device=device, lora=lora, allow_unverified_base=allow_unverified_base
        )
        return cls(model, SafetyPolicy.load(policy_path, model.config.taxonomy), max_prompt_tokens)

    def prompt_problem(self, prompt: str) -> str | None:
        if self.image_token in prompt:
            return f"the text contains the image placeholder {self.image_token!r}; send the image as an image_url part"
        return None

    def check_length(self, prompt: Prompt, chat: bool) -> None:
        if chat:
            self.gate.prompt_tokens([prompt])
        else:
            check_prompt_tokens(self.tokenizer, [user_text(prompt)], self.max_prompt_tokens)

    @torch.no_grad()
    def score_and_decide(
        self, pixels: torch.Tensor, prompts: Sequence[Prompt], text_only: Sequence[bool]
    ) -> list[SafetyDecision]:
        return self.gate.decide(pixels, list(prompts), self.policies(text_only))

    def generate(
        self,
        pixels: torch.Tensor,
        prompts: Sequence[Prompt],
        sampling: Sampling,
        text_only: Sequence[bool],
        streamer: Any = None,
        stopping_criteria: Any = None,
    ) -> list[GatedAnswer]:
        kwargs = sampling.generation_kwargs(self.tokenizer)
        if stopping_criteria is not None:
            kwargs["stopping_criteria"] = stopping_criteria
        return self.gate.generate(pixels, list(prompts), self.policies(text_only), streamer=streamer, **kwargs)


class VisionRunner(ModelRunner):
    """Vision tower + safety modules only (proxy mode): the head scores the image, never the text."""

    def __init__(self, scorer: VisionScorer, policy: SafetyPolicy) -> None:
        policy.check_taxonomy(scorer.taxonomy)
        super().__init__(policy, scorer.image_processor)
        self.scorer = scorer

    @classmethod
    def load(
        cls,
        base: str | Path,
        safety: str | Path,
        policy_path: str | Path | None = None,
        device: str | None = None,
        dtype: str = "auto",
        allow_unverified_base: bool = False,
    ) -> VisionRunner:
        scorer = VisionScorer.from_pretrained(
            base, safety, device=device, dtype=dtype, allow_unverified_base=allow_unverified_base
        )
        return cls(scorer, SafetyPolicy.load(policy_path, scorer.taxonomy))

    def score_and_decide(
        self, pixels: torch.Tensor, prompts: Sequence[Prompt], text_only: Sequence[bool]
    ) -> list[SafetyDecision]:
        level_probs, type_probs = self.scorer.score(pixels)
        return self.policy.decide_batch(level_probs, type_probs)
