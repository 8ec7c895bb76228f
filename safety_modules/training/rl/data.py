"""RL prompts: records (``safevlm data convert unsafe-concepts --split train``) -> image, question, gold label."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...data.format import image_problem, question_text, read_records
from ...data.unsafe_concepts_split import alignment_label
from ...errors import InputError
from ..config import DataFile

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RLSample:
    """One prompt for RL: the image, the user's question and the gold Safe/Unsafe label."""

    id: str
    image: Path
    prompt: str
    label: str
    category: str = ""
    concept: str = ""  # as written in the dataset (the text-only prompts insert it verbatim)


def load_samples(files: Sequence[DataFile], check_images: bool = True) -> list[RLSample]:
    """Every record of ``files`` as an `RLSample`; the label is ``alignment_label`` or, failing it, level 0 = Safe.

    With ``check_images`` every image is decoded once up front and a record whose image does not
    decode is left out with a warning (naming the file and the reason), so a rollout never stops on it.
    """
    samples = []
    for entry in files:
        for record in read_records(entry.path):
            problem = image_problem(entry.root / record["image"]) if check_images else None
            if problem:
                logger.warning(
                    "RL data: %s (record %s) skipped: %s", entry.root / record["image"], record["id"], problem
                )
                continue
            samples.append(
                RLSample(
                    record["id"],
                    entry.root / record["image"],
                    question_text(record),
                    alignment_label(record),
                    record.get("category", ""),
                    record.get("unsafe_concept") or record.get("concept", ""),
                )
            )
    if not samples:
        raise InputError(f"no usable records in {[f.path for f in files]}")
    return samples
