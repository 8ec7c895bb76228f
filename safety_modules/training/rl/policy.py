"""The RL policy around a `SafeLlava`: sampling answers and scoring them token by token.

The policy is the LoRA-adapted language model (peft); the reference is the same model with the
adapter disabled (``with language_model.disable_adapter()``, no second copy); the value is a
linear head on the policy's last hidden state (the trunk is the policy's, so it starts from the
policy). The vision tower, the projectors and the safety modules stay frozen: a prompt's input
embeddings ([text; tokens B; image tokens; text], from `SafeLlava.build_inputs_embeds`) are built
once per rollout and reused for every forward pass over that rollout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...modeling.safe_llava import SafeLlava
from .losses import entropy_from_logits


@dataclass
class Prompts:
    """Left-padded prompt input embeddings (B, P, d) and their attention mask (B, P)."""

    embeds: torch.Tensor
    mask: torch.Tensor

    def repeat(self, k: int) -> Prompts:
        """Each prompt ``k`` times in a row (GRPO groups)."""
        return Prompts(self.embeds.repeat_interleave(k, 0), self.mask.repeat_interleave(k, 0))


@torch.no_grad()
def encode_prompts(
    model: SafeLlava, images: Sequence[Any], prompts: Sequence[str], inject_safety_tokens: bool
) -> Prompts:
    """Images (paths or PIL) and questions -> the language model's input embeddings, as at inference."""
    features = model.encode_images(list(images))  # decodes paths; one tower pass per distinct image
    embeds, mask = model.prompt_embeds(features, prompts, inject_safety_tokens=inject_safety_tokens)
    return Prompts(embeds.detach(), mask.detach())


@dataclass
class Responses:
    """Sampled answers: token ids (B, T) padded after the first end-of-sequence token, mask (B, T) on the
    real tokens (the EOS included), whether each row stopped, and the decoded texts."""

    ids: torch.Tensor
    mask: torch.Tensor
    finished: torch.Tensor
    texts: list[str]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)


@torch.no_grad()
def sample(
    model: SafeLlava, prompts: Prompts, max_new_tokens: int, temperature: float = 1.0, greedy: bool = False
) -> Responses:
    """Generate one answer per prompt from the current policy (pure sampling at ``temperature``, or greedy)."""
    tokenizer = model.processor.tokenizer
    eos = model.base.generation_config.eos_token_id
    eos_ids = torch.tensor(sorted(set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}))
    kwargs: dict[str, Any] = (
        {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    )
    out = model.base.generate(
        inputs_embeds=prompts.embeds,
        attention_mask=prompts.mask,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    ).cpu()
    is_eos = torch.isin(out, eos_ids)
    finished = is_eos.any(1)
    # real tokens: everything up to and including the first EOS
    mask = (torch.cumsum(is_eos.int(), 1) - is_eos.int()) == 0
    ids = torch.where(mask, out, torch.full_like(out, tokenizer.pad_token_id))
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return Responses(ids, mask.long(), finished, [t.strip() for t in texts])


class ActorCritic(nn.Module):
    """Policy log-probabilities, entropies and values of given responses, in one pass of the language model."""

    def __init__(self, model: SafeLlava, temperature: float = 1.0, with_value: bool = True) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        hidden = model.base.config.text_config.hidden_size
        self.value_head = nn.Linear(hidden, 1) if with_value else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)  # values start at 0; the trunk is the policy's
            nn.init.zeros_(self.value_head.bias)

    @property
    def language_model(self):
        return self.model.base.model.language_model

    def _inputs(
        self,
        prompt_embeds: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[prompt; response] input embeddings and attention mask (the token embeddings are outside the adapter)."""
        response_ids = response_ids.to(prompt_embeds.device)
        tokens = self.model.base.get_input_embeddings()(response_ids).to(prompt_embeds.dtype)
        return torch.cat([prompt_embeds, tokens], 1), torch.cat([prompt_mask, response_mask.to(prompt_mask)], 1)

    def _hidden(self, embeds: torch.Tensor, mask: torch.Tensor, start: int, length: int) -> torch.Tensor:
        """The language model's last hidden state before each response token (B, length, d)."""
        # left padding: positions count real tokens only, as generate does
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        hidden = self.model.base.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        return hidden.last_hidden_state[:, start - 1 : start - 1 + length]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.base.lm_head(hidden).float() / self.temperature

    def _values(self, hidden: torch.Tensor) -> torch.Tensor | None:
        return self.value_head(hidden.float()).squeeze(-1) if self.value_head is not None else None

    def forward(
        self,
        prompt_embeds: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(log-prob of each response token, entropy at each position, value at each position), each (B, T)."""
        embeds, mask = self._inputs(prompt_embeds, prompt_mask, response_ids, response_mask)
        hidden = self._hidden(embeds, mask, prompt_embeds.shape[1], response_ids.shape[1])
        logits = self._logits(hidden)
        return _token_logprobs(logits, response_ids), entropy_from_logits(logits), self._values(hidden)

    @torch.no_grad()
    def rollout_logprobs(
        self,
        prompt_embeds: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(policy log-probs, reference log-probs, policy values) of sampled responses, no entropy (unused there).

        The reference is the same weights with the LoRA adapter switched off; it reuses the input
        embeddings (prompt and response tokens, all outside the adapter), so only the language model runs again."""
        embeds, mask = self._inputs(prompt_embeds, prompt_mask, response_ids, response_mask)
        start, length = prompt_embeds.shape[1], response_ids.shape[1]
        hidden = self._hidden(embeds, mask, start, length)
        logp = _token_logprobs(self._logits(hidden), response_ids)
        with self.language_model.disable_adapter():
            ref = _token_logprobs(self._logits(self._hidden(embeds, mask, start, length)), response_ids)
        return logp, ref, self._values(hidden)


def _token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, -1).gather(-1, ids.to(logits.device)[..., None]).squeeze(-1)
