"""Prompt-length limits: one public check, used by the gate, the CLI and the server alike.

A prompt longer than the model's context cannot be answered, and a very long one holds the one
model thread for its whole prefill; so it is refused before any model work, with the count and
the limit in the message.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError, InputError


class PromptTooLong(InputError):
    """A prompt over the token limit; ``count`` is its length in tokens (a lower bound when
    ``exact`` is False: the text was too long to be worth tokenising whole)."""

    def __init__(self, index: int, count: int, limit: int, exact: bool = True) -> None:
        self.index, self.count, self.limit, self.exact = index, count, limit, exact
        counted = f"{count:,} tokens" if exact else f"more than {limit:,} tokens ({count:,} characters)"
        super().__init__(f"prompt {index} is {counted}; the prompt limit is {limit:,} tokens")


def context_length(model_config: Any) -> int:
    """The language model's context length (``max_position_embeddings`` of its text config)."""
    text_config = getattr(model_config, "text_config", model_config)
    return int(text_config.max_position_embeddings)


@functools.lru_cache(maxsize=16)
def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one vocabulary entry spells (an upper bound on characters per token).

    Cached per tokenizer: a walk over a 32k vocabulary costs about 200 prompts' tokenisation
    (`tests/gate/test_limits.py` counts the walks), and every gated request asks."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1)


def check_prompt_tokens(tokenizer: Any, texts: Sequence[str], limit: int | None, extra: int = 0) -> list[int]:
    """Each text's length in tokens plus ``extra`` (positions the text does not spell: image and safety
    tokens); raises `PromptTooLong` naming the first one over ``limit`` (``None``: count only).

    A text longer than ``limit`` times the longest vocabulary entry is over without being tokenised
    (no tokenisation can spell it in fewer tokens), so a megabyte of text costs nothing to refuse.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"the prompt token limit must be >= 1, got {limit}")
    cap = None if limit is None else (limit + 1) * longest_token_chars(tokenizer)
    counts = []
    for i, text in enumerate(texts):
        if limit is not None and cap is not None and len(text) > cap:
            raise PromptTooLong(i, len(text), limit, exact=False)
        count = len(tokenizer(text, add_special_tokens=True)["input_ids"]) + extra
        if limit is not None and count > limit:
            raise PromptTooLong(i, count, limit)
        counts.append(count)
    return counts
