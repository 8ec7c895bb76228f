"""Dataset and collator: records -> model inputs with correct label masking.

Labels follow the usual convention: ``labels[t]`` is ``input_ids[t]`` for the tokens an
assistant turn generates (its text and its end-of-sequence token) and -100 everywhere
else: system text, the user's turns, the image tokens, the role markers and padding.
They are *not* shifted here; `safety_modules.modeling.safe_llava.lm_loss` shifts logits and labels
together, and the wrapper inserts -100 for the safety tokens it adds.

The conversation is rendered and labelled by `safety_modules.modeling.llava.conversation.encode_conversation`,
the same renderer inference uses (`chat_text`), in the base's own format (llava-hf for HF
bases, ``vicuna_v1`` with its system prompt for original checkpoints). Answer tokens come
from the assistant turns' positions in that rendering, never from searching the text, so an
answer that also occurs in the question ("... A. cat B. dog ..." -> "A") is labelled where
the assistant says it, and every assistant turn's EOS is trained.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data.format import question_text, record_label
from ..images import ImageDecodeError, decode_image
from ..modeling.llava.conversation import encode_conversation
from ..modeling.safe_llava import IGNORE_INDEX, head_prompt_inputs
from ..taxonomy import Taxonomy

logger = logging.getLogger(__name__)

__all__ = ["MODEL_INPUTS", "SafetyCollator", "SafetyDataset", "encode_conversation"]


class SafetyDataset(Dataset):
    """Records + image root -> tokenised, labelled samples. Unreadable images give a ``skipped`` item."""

    def __init__(
        self,
        records: list[dict[str, Any]],
        image_root: str | Path,
        processor: Any,
        taxonomy: Taxonomy,
        num_image_tokens: int,
        max_length: int | None = 2048,
    ) -> None:
        self.records = records
        self.image_root = Path(image_root)
        self.processor = processor
        self.taxonomy = taxonomy
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.labels = [record_label(r, taxonomy) for r in records]  # validates every label up front

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        path = self.image_root / record["image"]
        try:
            image = decode_image(path)
        except ImageDecodeError as exc:
            logger.warning("skipping %s (record %s): %s", path, record["id"], exc)
            return {"skipped": (str(path), str(exc))}
        input_ids, labels = encode_conversation(
            self.processor, record["conversations"], self.num_image_tokens, self.max_length
        )
        pixel_values = self.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        level, type_ = self.labels[index]
        return {
            "input_ids": input_ids,
            "labels": labels,
            "pixel_values": pixel_values,
            "question": question_text(record),
            "level": level,
            "type": type_,
            "id": record["id"],
        }


class SafetyCollator:
    """Pads a list of samples into a batch (right padding; labels -100 and attention 0 on padding).

    Adds ``head_input_ids``/``head_attention_mask`` (the user's question, tokenised by
    `wrapper.head_prompt_inputs` as at inference), ``safety_levels``, ``safety_types``, and
    ``skipped``: the (path, reason) of samples whose image could not be read.
    """

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.pad_token_id = processor.tokenizer.pad_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        samples = [x for x in items if "skipped" not in x]
        batch: dict[str, Any] = {
            "skipped": [x["skipped"] for x in items if "skipped" in x],
            "num_samples": len(samples),
        }
        if not samples:
            return batch
        length = max(len(s["input_ids"]) for s in samples)
        ids = torch.full((len(samples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(samples), length), dtype=torch.long)
        for b, s in enumerate(samples):
            n = len(s["input_ids"])
            ids[b, :n], labels[b, :n], mask[b, :n] = s["input_ids"], s["labels"], 1
        head_ids, head_mask = head_prompt_inputs(self.processor.tokenizer, [s["question"] for s in samples])
        batch.update(
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            pixel_values=torch.stack([s["pixel_values"] for s in samples]),
            head_input_ids=head_ids,
            head_attention_mask=head_mask,
            safety_levels=torch.tensor([s["level"] for s in samples]),
            safety_types=torch.tensor([s["type"] for s in samples]),
            ids=[s["id"] for s in samples],
        )
        return batch


MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "labels",
    "pixel_values",
    "head_input_ids",
    "head_attention_mask",
    "safety_levels",
    "safety_types",
)
