"""Greedy answers of the RL policy and their alignment accuracy (rules parser or a classifier judge)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ...evaluation.parsing import parse_alignment
from ...modeling.safe_llava import SafeLlava
from .data import RLSample
from .policy import encode_prompts, sample


@torch.no_grad()
def greedy_texts(
    model: SafeLlava,
    images: Sequence[Any],
    prompts: Sequence[str],
    inject_safety_tokens: bool,
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[str]:
    """The model's greedy answer to each (image, prompt): the rollout path with sampling off.
    ``images``: paths or PIL images."""
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        encoded = encode_prompts(
            model, images[start : start + batch_size], prompts[start : start + batch_size], inject_safety_tokens
        )
        answers += sample(model, encoded, max_new_tokens, greedy=True).texts
    return answers


def greedy_answers(
    model: SafeLlava, samples: Sequence[RLSample], inject_safety_tokens: bool, max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """The model's greedy answer to each sample."""
    return greedy_texts(
        model, [s.image for s in samples], [s.prompt for s in samples], inject_safety_tokens, max_new_tokens, batch_size
    )


def alignment_accuracy(labels: Sequence[str], predicted: Sequence[str]) -> dict[str, float | int | None]:
    """Accuracy over judged answers (the paper's: NA left out), per gold label and overall, plus the NA count,
    ``strict_accuracy`` (NA counted as wrong) and ``balanced_accuracy`` (the mean over the gold labels present
    of their strict accuracy: an answer that ignores the image scores 0.5 whatever the label mix).
    ``predicted``: Safe / Unsafe / NA per answer."""

    def acc(rows):
        valid = [(g, p) for g, p in rows if p != "NA"]
        return sum(g == p for g, p in valid) / len(valid) if valid else None

    rows = list(zip(labels, predicted))
    correct = sum(g == p for g, p in rows)
    per_label = [sum(g == p for g, p in rows if g == label) / labels.count(label) for label in sorted(set(labels))]
    return {
        "n": len(rows),
        "na": sum(p == "NA" for _, p in rows),
        "accuracy": acc(rows),
        "safe_accuracy": acc([r for r in rows if r[0] == "Safe"]),
        "unsafe_accuracy": acc([r for r in rows if r[0] == "Unsafe"]),
        "strict_accuracy": correct / len(rows) if rows else None,
        "balanced_accuracy": sum(per_label) / len(per_label) if per_label else None,
    }


def evaluate_alignment(
    model: SafeLlava, samples: Sequence[RLSample], inject_safety_tokens: bool, max_new_tokens: int, batch_size: int = 16
) -> tuple[dict, list[str]]:
    """Greedy answers labelled by the rule parser; (metrics, answers)."""
    answers = greedy_answers(model, samples, inject_safety_tokens, max_new_tokens, batch_size)
    return alignment_accuracy([s.label for s in samples], [parse_alignment(a) for a in answers]), answers
