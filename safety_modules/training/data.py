"""Dataset and collator: records -> model inputs with correct label masking.

Labels follow the usual convention: ``labels[t]`` is ``input_ids[t]`` where the token
is part of an answer (the assistant text and the end-of-sequence token the template
puts right after it) and -100 everywhere else: system text, the user's turns, the
image tokens, the role markers and padding. They are *not* shifted here;
`safety_modules.wrapper.lm_loss` shifts logits and labels together, and the wrapper
inserts -100 for the safety tokens it adds. (The reference code got this wrong in
three ways: its ignore index was the pad id, it overwrote answer tokens in the inputs
and it rotated the inputs without the labels.)

Answer tokens are found by character spans in the text the base model's own chat
template renders, mapped to tokens through the tokenizer's offsets, so any template
works as long as it writes the answers verbatim.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from ..data.format import IMAGE_MARKER, question_text, record_label
from ..images import ImageDecodeError, decode_image
from ..taxonomy import Taxonomy
from ..wrapper import IGNORE_INDEX, head_prompt_inputs

logger = logging.getLogger(__name__)


def to_messages(turns: list[dict[str, str]], system_prompt: str | None = None) -> list[dict[str, Any]]:
    """LLaVA ``conversations`` -> chat-template messages; the image goes into the first user turn."""
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    for i, turn in enumerate(turns):
        text = turn["value"].replace(IMAGE_MARKER, "").strip()
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        if i == 0:
            content.insert(0, {"type": "image"})
        messages.append({"role": "user" if turn["from"] == "human" else "assistant", "content": content})
    return messages


def answer_spans(text: str, answers: Sequence[str], eos_token: str | None) -> list[tuple[int, int]]:
    """Character spans of the answers in the rendered ``text`` (each extended over a following EOS)."""
    spans, pos = [], 0
    for answer in answers:
        answer = answer.strip()
        if not answer:
            continue  # nothing to imitate: no language-model target for this turn
        start = text.find(answer, pos)
        if start < 0:
            raise ValueError(f"the chat template did not render the answer verbatim: {answer[:60]!r}")
        end = start + len(answer)
        rest = text[end:]
        if eos_token and rest.lstrip(" ").startswith(eos_token):
            end += len(rest) - len(rest.lstrip(" ")) + len(eos_token)
        spans.append((start, end))
        pos = end
    return spans


def encode_conversation(
    processor: Any,
    turns: list[dict[str, str]],
    num_image_tokens: int,
    max_length: int | None = None,
    system_prompt: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (with the ``<image>`` token expanded to the image-token run) and their labels."""
    tokenizer = processor.tokenizer
    text = processor.apply_chat_template(to_messages(turns, system_prompt), tokenize=False)
    answers = [t["value"] for t in turns if t["from"] == "gpt"]
    spans = answer_spans(text, answers, tokenizer.eos_token)
    add_bos = not (tokenizer.bos_token and text.startswith(tokenizer.bos_token))
    enc = tokenizer(text, add_special_tokens=add_bos, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    for j, (s, e) in enumerate(offsets):
        piece = text[s:e]
        first = s + len(piece) - len(piece.lstrip())  # a token's leading space belongs to the word after it
        # A token is an answer token when its first visible character lies in an answer span; a token
        # that starts in the prompt stays masked even if a tokenizer merged it into the answer.
        if e > s and any(span_start <= first < span_end for span_start, span_end in spans):
            labels[j] = ids[j]
    if turns[-1]["from"] == "gpt" and turns[-1]["value"].strip() and ids[-1] != tokenizer.eos_token_id:
        # Templates that write no EOS after the answer (llava-hf's) would never teach the model to stop.
        ids, labels = ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_MARKER)
    where = [j for j, t in enumerate(ids) if t == image_id]
    if len(where) != 1:
        raise ValueError(f"expected one {IMAGE_MARKER} token in the rendered prompt, found {len(where)}")
    j = where[0]
    # The processor expands <image> the same way (one placeholder -> one token per image patch).
    ids = ids[:j] + [image_id] * num_image_tokens + ids[j + 1:]
    labels = labels[:j] + [IGNORE_INDEX] * num_image_tokens + labels[j + 1:]
    if max_length is not None and len(ids) > max_length:
        if j + num_image_tokens > max_length:
            raise ValueError(f"max_length={max_length} cuts into the image tokens")
        ids, labels = ids[:max_length], labels[:max_length]
    return torch.tensor(ids), torch.tensor(labels)


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
        system_prompt: str | None = None,
    ) -> None:
        self.records = records
        self.image_root = Path(image_root)
        self.processor = processor
        self.taxonomy = taxonomy
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.system_prompt = system_prompt
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
        input_ids, labels = encode_conversation(self.processor, record["conversations"], self.num_image_tokens,
                                                self.max_length, self.system_prompt)
        pixel_values = self.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        level, type_ = self.labels[index]
        return {"input_ids": input_ids, "labels": labels, "pixel_values": pixel_values,
                "question": question_text(record), "level": level, "type": type_, "id": record["id"]}


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
        batch: dict[str, Any] = {"skipped": [x["skipped"] for x in items if "skipped" in x], "num_samples": len(samples)}
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
            input_ids=ids, attention_mask=mask, labels=labels,
            pixel_values=torch.stack([s["pixel_values"] for s in samples]),
            head_input_ids=head_ids, head_attention_mask=head_mask,
            safety_levels=torch.tensor([s["level"] for s in samples]),
            safety_types=torch.tensor([s["type"] for s in samples]),
            ids=[s["id"] for s in samples],
        )
        return batch


MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "pixel_values", "head_input_ids", "head_attention_mask",
                "safety_levels", "safety_types")
