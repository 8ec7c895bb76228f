"""The one place that renders a conversation as the base model's chat text (training and inference)."""
from __future__ import annotations

from typing import Any


def chat_text(processor: Any, prompt: str, hint: str | None = None) -> str:
    """The model's own chat format for one image and a question, the hint (if any) after the question."""
    content: list[dict[str, str]] = [{"type": "image"}, {"type": "text", "text": prompt}]
    if hint:
        content.append({"type": "text", "text": hint})
    if getattr(processor, "chat_template", None) is None:
        raise ValueError("the base model's processor has no chat template")
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
