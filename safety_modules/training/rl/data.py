"""RL prompts: records (``safevlm data convert unsafe-concepts --split train``) -> image, question, gold label."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ...data.format import question_text, read_records
from ...data.unsafe_concepts import alignment_label
from ..config import DataFile


@dataclass(frozen=True)
class RLSample:
    """One prompt for RL: the image, the user's question and the gold Safe/Unsafe label."""

    id: str
    image: Path
    prompt: str
    label: str
    category: str = ""
    concept: str = ""  # as written in the dataset (the text-only prompts insert it verbatim)


def load_samples(files: Sequence[DataFile]) -> list[RLSample]:
    """Every record of ``files`` as an `RLSample`; the label is ``alignment_label`` or, failing it, level 0 = Safe."""
    samples = []
    for entry in files:
        for record in read_records(entry.path):
            samples.append(RLSample(record["id"], entry.root / record["image"], question_text(record),
                                    alignment_label(record), record.get("category", ""),
                                    record.get("unsafe_concept") or record.get("concept", "")))
    if not samples:
        raise ValueError(f"no records in {[f.path for f in files]}")
    return samples
