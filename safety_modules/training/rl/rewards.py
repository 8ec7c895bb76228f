"""Rewards for RL alignment: a judge of the answer against its label, then the paper's shaping.

A judge (`RulesJudge`, `ClassifierJudge`) maps answers and their gold labels (Safe / Unsafe) to a
raw score per answer and a validity flag (False when the judge calls the answer NA: it does not
judge the image). `shape_rewards` then does what SaferVLM's ``RLHF/models/reward_model.py`` does,
in its order: min-max normalise the raw scores within the batch to [0, 1], multiply by the mask
(the paper's mask keeps yes-or-no prompts, all of ours are; we also mask NA answers, which earn
no alignment reward), add ``length_bonus x length / max_length`` and add ``stop_penalty`` when
no end-of-sequence token was produced. An all-equal batch normalises to zeros (the published code
divides by zero there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ...errors import ModelError
from ...evaluation.parsing import parse_alignment

LABELS = ("Safe", "Unsafe")


@dataclass
class JudgedAnswers:
    """A judge's raw score per answer (higher = closer to the label) and whether it judged at all."""

    raw: torch.Tensor  # (B,) float32
    valid: torch.Tensor  # (B,) bool; False = NA


class Judge(Protocol):
    name: str

    def __call__(self, answers: Sequence[str], labels: Sequence[str]) -> JudgedAnswers: ...


class RewardClassifierError(ModelError):
    """The reward classifier cannot be loaded; the message names its folder (or file) and the problem."""


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _check_safetensors(path: Path, what: str) -> None:
    """Refuse a weights file that is missing, not safetensors, or whose header does not describe the whole file
    (truncated, empty, garbage): safetensors checks that when it opens the file."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise RewardClassifierError(f"{what} {path}: no such file")
    if path.suffix != ".safetensors":
        raise RewardClassifierError(
            f"{what} {path}: only .safetensors weights are loaded (no pickle); convert it (see docs/evaluation.md)"
        )
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise RewardClassifierError(
            f"{what} {path}: unreadable safetensors file (truncated or not one: {exc})"
        ) from None


def check_classifier_folder(source: str | Path, what: str = "reward classifier", weights: bool = True) -> bool:
    """Check a local classifier folder before transformers reads it: it holds ``config.json`` and (with
    ``weights``) readable ``.safetensors`` weights, not only pickles. Returns False when ``source`` is no local
    path but may be a hub id (left to the loader); a path that is neither is a `RewardClassifierError`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(source)
    if not path.exists():
        try:
            validate_repo_id(str(source))
        except HFValidationError:
            raise RewardClassifierError(f"{what} {source}: no such folder") from None
        return False
    if not path.is_dir():
        raise RewardClassifierError(f"{what} {source}: not a folder (give the folder that holds config.json)")
    if not (path / "config.json").is_file():
        raise RewardClassifierError(f"{what} {source}: no config.json in the folder")
    if weights:
        found = sorted(path.glob("*.safetensors"))
        if not found:
            pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
            if pickles:
                raise RewardClassifierError(
                    f"{what} {source}: holds only pickle weights {pickles}; only .safetensors are loaded "
                    "(convert them, see docs/evaluation.md)"
                )
            raise RewardClassifierError(f"{what} {source}: no .safetensors weights in the folder")
        for file in found:
            _check_safetensors(file, what)
    return True


def _load_error(what: str, source: str | Path, exc: Exception) -> RewardClassifierError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = "" if Path(source).exists() else " (not a local folder, and loading it from the hub failed)"
    return RewardClassifierError(f"{what} {source}{where}: {type(exc).__name__}: {first}")


def _check_labels(labels: Sequence[str]) -> None:
    bad = sorted({label for label in labels if label not in LABELS})
    if bad:
        raise ValueError(f"gold labels must be Safe or Unsafe, got {bad}")


class RulesJudge:
    """Our offline alignment parser (`evaluation.parsing.parse_alignment`) as the label source:
    1 when the parsed label equals the gold one, 0 when it is the other, NA answers invalid."""

    name = "rules"

    def __call__(self, answers: Sequence[str], labels: Sequence[str]) -> JudgedAnswers:
        _check_labels(labels)
        parsed = [parse_alignment(a) for a in answers]
        raw = torch.tensor([float(p == g) for p, g in zip(parsed, labels)])
        return JudgedAnswers(raw, torch.tensor([p != "NA" for p in parsed]))


class ClassifierJudge:
    """A sequence classifier over the answer text (the published one: RoBERTa-base, labels Safe/Unsafe/NA).

    ``source``: a folder or hub id of a transformers sequence-classification model, loaded from
    safetensors only. Its ``id2label`` must name Safe and Unsafe (NA optional). raw = -CE(logits,
    gold label); an answer whose arg-max label is NA is invalid.
    """

    name = "classifier"

    def __init__(
        self, source: str | Path, device: str | torch.device = "cpu", max_length: int = 512, batch_size: int = 32
    ) -> None:
        from safetensors import SafetensorError
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        check_classifier_folder(source)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(source))
            self.model = AutoModelForSequenceClassification.from_pretrained(str(source), use_safetensors=True)
        except (OSError, ValueError, KeyError, SafetensorError) as exc:  # the hub's errors are OSError/ValueError
            raise _load_error("reward classifier", source, exc) from exc
        self.model.to(device).eval().requires_grad_(False)
        names = {str(v).lower(): int(k) for k, v in self.model.config.id2label.items()}
        missing = [label for label in LABELS if label.lower() not in names]
        if missing:
            raise ValueError(f"{source}: the classifier's labels {sorted(names)} lack {missing} (id2label in config)")
        self.label_ids = {label: names[label.lower()] for label in LABELS}
        self.na_id = names.get("na", names.get("n/a"))
        self.device, self.max_length, self.batch_size = torch.device(device), max_length, batch_size

    @torch.no_grad()
    def logits(self, answers: Sequence[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(answers), self.batch_size):
            enc = self.tokenizer(
                list(answers[start : start + self.batch_size]),
                truncation=True,
                padding=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            out.append(self.model(**enc).logits.float().cpu())
        return torch.cat(out)

    def __call__(self, answers: Sequence[str], labels: Sequence[str]) -> JudgedAnswers:
        _check_labels(labels)
        logits = self.logits(answers)
        gold = torch.tensor([self.label_ids[g] for g in labels])
        raw = -torch.nn.functional.cross_entropy(logits, gold, reduction="none")
        valid = torch.ones(len(answers), dtype=torch.bool) if self.na_id is None else logits.argmax(-1) != self.na_id
        return JudgedAnswers(raw, valid)


class PublishedClassifierJudge(ClassifierJudge):
    """The published alignment classifier as SaferVLM ships it: a RoBERTa encoder (``encoder_dir``: config +
    tokenizer, e.g. a local ``roberta-base``) and a state dict with a linear head on the first token,
    converted to ``.safetensors`` (`evaluation.parsing.ResponseClassifier` loads it and reports missing keys).
    Labels Safe=0, Unsafe=1, NA=2 as published."""

    def __init__(
        self,
        encoder_dir: str | Path,
        weights: str | Path,
        device: str | torch.device = "cpu",
        max_length: int = 512,
        batch_size: int = 32,
    ) -> None:
        from ...evaluation.parsing import ALIGNMENT_LABELS, ResponseClassifier

        check_classifier_folder(encoder_dir, "reward classifier encoder", weights=False)
        _check_safetensors(Path(weights), "reward classifier weights")
        try:
            self.classifier = ResponseClassifier(
                encoder_dir, weights, ALIGNMENT_LABELS, device=str(device), max_length=max_length
            )
        except (OSError, KeyError, TypeError) as exc:
            raise _load_error("reward classifier encoder", encoder_dir, exc) from exc
        if self.classifier.missing_keys:
            raise ValueError(
                f"{weights}: {len(self.classifier.missing_keys)} keys missing (e.g. "
                f"{self.classifier.missing_keys[:3]}): a partly random classifier is no reward"
            )
        self.label_ids = {label: ALIGNMENT_LABELS.index(label) for label in LABELS}
        self.na_id = ALIGNMENT_LABELS.index("NA")
        self.device, self.max_length, self.batch_size = torch.device(device), max_length, batch_size

    @torch.no_grad()
    def logits(self, answers: Sequence[str]) -> torch.Tensor:
        c, out = self.classifier, []
        for start in range(0, len(answers), self.batch_size):
            # right padding: the head reads the first token
            enc = c.tokenizer(
                list(answers[start : start + self.batch_size]),
                truncation=True,
                padding=True,
                padding_side="right",
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            out.append(c.head(c.encoder(**enc).last_hidden_state[:, 0]).float().cpu())
        return torch.cat(out)


def min_max_normalise(raw: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale the valid scores to [0, 1] within the batch; invalid ones and an all-equal batch give 0."""
    out = torch.zeros_like(raw, dtype=torch.float32)
    if not valid.any():
        return out
    kept = raw[valid].float()
    low, high = kept.min(), kept.max()
    if high > low:
        out[valid] = (kept - low) / (high - low)
    return out


def shape_rewards(
    judged: JudgedAnswers,
    lengths: torch.Tensor,
    finished: torch.Tensor,
    max_length: int,
    *,
    length_bonus: float = 0.0,
    stop_penalty: float = 0.0,
    mask_na: bool = True,
) -> torch.Tensor:
    """Sequence rewards (B,): normalised judge score x mask + length bonus + penalty when unfinished.

    ``lengths``: real (non-pad) response tokens; ``finished``: whether an end-of-sequence token was
    produced; ``stop_penalty`` is added as is (the paper: -8.0). With ``mask_na=False`` NA answers
    keep their (normalised) raw score.
    """
    valid = judged.valid if mask_na else torch.ones_like(judged.valid)
    rewards = min_max_normalise(judged.raw, valid) * valid.float()
    rewards = rewards + length_bonus * lengths.float() / max_length
    return rewards + torch.where(finished.bool(), 0.0, stop_penalty)


def make_judge(
    kind: str, classifier: str | None = None, device: str | torch.device = "cpu", classifier_weights: str | None = None
) -> Judge:
    """``rules`` or ``classifier``: then ``classifier`` is a sequence-classification model (folder or hub id),
    or, with ``classifier_weights`` (the published head + encoder state dict as .safetensors), the RoBERTa
    encoder folder those weights belong to."""
    if kind == "rules":
        return RulesJudge()
    if kind == "classifier":
        if not classifier:
            raise ValueError("reward: classifier needs `reward_classifier:` (a folder or hub id, safetensors)")
        if classifier_weights:
            return PublishedClassifierJudge(classifier, classifier_weights, device)
        return ClassifierJudge(classifier, device)
    raise ValueError(f"reward must be rules or classifier, got {kind!r}")
