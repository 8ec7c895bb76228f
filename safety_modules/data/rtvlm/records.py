"""RTVLM items as training records, with their (level, type) label and a target answer.

Which label a record gets:

- **type**: always the subtask's (`safety_modules.taxonomy.RTVLM_SUBTASK_LABELS` or a user mapping);
  the rows carry no risk type.
- **level**: the subtask's, except in the subsets whose rows carry their own ``refused_to_answer``
  that varies row by row (``Subset.row_labels``): text misleading (one label per question) and the
  mixed celebrity file (ordinary people "Refuse to Answer", celebrities "Proceed with Caution").
  There the row's label decides: "Refuse to Answer" -> the top level (reject), "Proceed/Answer with
  Caution" -> the subtask's level, "Safe to Answer" -> level 0 with the safe type. Where a subset's
  label is one constant (politics and racial "Proceed with Caution", jailbreak "Refuse to Answer",
  the flag subsets "Safe to Answer", captcha none at all), it says nothing about the row, and the
  safety paper's per-class labels are kept: it trains visual misleading as "Misleading" and politics
  at level 3 although RTVLM's files say "Safe to Answer" and "Proceed with Caution" for them.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path

from ...errors import InputError
from ...images import ImageDecodeError
from ...taxonomy import DEFAULT_LEVELS, RTVLM_SUBTASK_LABELS, SAFE_TYPE
from .loader import RTVLMItem, load_item_image, load_rtvlm
from .subsets import LABELS, REFUSE, SAFE, SUBSETS

logger = logging.getLogger(__name__)

_ROW_LABELLED = {s.name for s in SUBSETS if s.row_labels}
_REJECT_LEVEL = len(DEFAULT_LEVELS) - 1

# Answers written for training records where the dataset has no reference text. Ours, per subtask.
_REFUSALS: dict[str, str] = {
    "captcha": "I'm sorry, but I can't solve CAPTCHAs: they exist to tell people from automated programs, "
    "and getting around them can enable abuse.",
    "jailbreak": "I'm sorry, but I can't follow the instructions in this image: they try to get around safety "
    "rules and ask for harmful content.",
    "celebrity": "I'm sorry, but I can't identify this person or share personal information about them: "
    "that could violate their privacy.",
}
_DEFAULT_REFUSAL = "I'm sorry, but I can't help with that: answering could cause harm or mislead."
_CAUTIOUS: dict[str, str] = {
    "politics": "This image concerns a political topic. I can describe what is visible, but I will stay neutral "
    "and avoid unverified claims or taking sides.",
    "racial": "I can describe what is visible, but I won't make assumptions about people based on race or "
    "ethnicity; such judgements can be unfair and harmful.",
    "face": "I can describe what is visible, but I won't infer someone's character, job or abilities from their "
    "face, gender or ethnicity; that would be biased.",
    "celebrity": "This appears to be a public figure. I can share widely known public information, but not "
    "private details.",
}
_DEFAULT_CAUTIOUS = (
    "I should be careful here: I can describe what is visible, but I won't make claims the image does not support."
)


def item_label(item: RTVLMItem, mapping: Mapping[str, tuple[int, str]] = RTVLM_SUBTASK_LABELS) -> tuple[int, str]:
    """The record's (level, type): the subtask's, or the row's own label where the subset's rows carry one."""
    if item.subtask not in mapping:
        raise InputError(f"no (level, type) for RTVLM subtask {item.subtask!r} in the mapping")
    level, type_name = mapping[item.subtask]
    if item.subset not in _ROW_LABELLED:
        return int(level), str(type_name)
    if item.label == REFUSE:
        return _REJECT_LEVEL, str(type_name)
    if item.label == SAFE:
        return 0, SAFE_TYPE
    return int(level), str(type_name)  # with caution: the subtask's level


def target_answer(item: RTVLMItem, level: int) -> str:
    """The assistant turn for a training record: a refusal, the reference answer, or a cautious answer."""
    if item.label == REFUSE or level >= _REJECT_LEVEL:
        return _REFUSALS.get(item.subtask, _DEFAULT_REFUSAL)
    if item.reference and item.reference not in LABELS:
        return item.reference
    return _CAUTIOUS.get(item.subtask, _DEFAULT_CAUTIOUS)


def rtvlm_conversion(
    snapshot_dir: str | Path,
    out_dir: str | Path,
    split: str = "train",
    seed: int = 0,
    train_fraction: float = 0.8,
    mapping: Mapping[str, tuple[int, str]] | None = None,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """RTVLM items (``Jailbreak2`` included) as training records, and what was skipped: ``(where, why)`` pairs.

    Record: ``{"id", "image" (relative to out_dir), "conversations": [human "<image>\\n<question>",
    gpt <answer or refusal>], "safety": {"level", "type"}}`` (labels: see the module docstring).
    Images are written under ``out_dir/images/rtvlm/``; order items (two images) get one
    side-by-side image, as at evaluation.
    """
    mapping = RTVLM_SUBTASK_LABELS if mapping is None else mapping
    out = Path(out_dir)
    data = load_rtvlm(
        snapshot_dir,
        cache_dir=out / ".rtvlm_extracted",
        split=split,
        seed=seed,
        train_fraction=train_fraction,
        include_extra=True,
    )
    skipped = [tuple(line.split(": ", 1)) for line in data.problems]
    records = []
    for item in data.items:
        level, type_name = item_label(item, mapping)
        relative = (
            Path("images") / "rtvlm" / item.subset / f"{item.id}.png"
            if len(item.images) > 1
            else Path("images") / "rtvlm" / item.subset / item.images[0].name
        )
        target = out / relative
        if not target.exists():
            try:
                image = load_item_image(item)  # refuse to copy a file that does not decode
            except ImageDecodeError as exc:
                logger.warning("RTVLM %s: image does not decode (%s); record skipped", item.id, exc)
                skipped.append((item.id, f"image does not decode: {exc}"))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if len(item.images) > 1:
                image.save(target)
            else:
                shutil.copyfile(item.images[0], target)
        records.append(
            {
                "id": f"rtvlm-{item.id}",
                "image": relative.as_posix(),
                "conversations": [
                    {"from": "human", "value": f"<image>\n{item.question}"},
                    {"from": "gpt", "value": target_answer(item, level)},
                ],
                "safety": {"level": int(level), "type": str(type_name)},
            }
        )
    return records, [(str(a), str(b)) for a, b in skipped]


def rtvlm_to_records(
    snapshot_dir: str | Path,
    out_dir: str | Path,
    split: str = "train",
    seed: int = 0,
    train_fraction: float = 0.8,
    mapping: Mapping[str, tuple[int, str]] | None = None,
) -> list[dict]:
    """The records of `rtvlm_conversion` (what was skipped is logged there)."""
    return rtvlm_conversion(snapshot_dir, out_dir, split, seed, train_fraction, mapping)[0]
