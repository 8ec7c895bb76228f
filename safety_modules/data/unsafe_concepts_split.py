"""The UnsafeConcepts RL alignment split (SaferVLM ``build_training_data.py``): the paper's 80/20 split per
concept, matched safe images from a labelled folder, one of the five alignment prompts per image, and
Safe/Unsafe labels, written as training records (`data convert unsafe-concepts --split train|test`)."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, InputError
from ..safe_files import read_json
from ..taxonomy import UNSAFE_CONCEPTS_CATEGORY_LABELS
from .unsafe_concepts import ALIGNMENT_PROMPTS, UnsafeConceptItem, copy_unsafe_image, load_unsafe_concepts

logger = logging.getLogger(__name__)

PAPER_SPLIT_SEED = 2024
ALIGNMENT_LABELS = ("Safe", "Unsafe")


def split_per_concept(
    items: list[UnsafeConceptItem], seed: int = PAPER_SPLIT_SEED
) -> tuple[list[UnsafeConceptItem], list[UnsafeConceptItem]]:
    """The paper's 80/20 split *per concept*: floor(0.8 n) images of each concept train, the rest test.

    On the full 1,567 images this gives the published 1,222 train / 345 test. The permutation is
    ours (one seeded `random.Random` over the concepts in sorted order), so the counts match the
    paper's split, not necessarily the very same images.
    """
    rng = random.Random(seed)
    by_concept: dict[str, list[UnsafeConceptItem]] = {}
    for item in items:
        by_concept.setdefault(item.concept, []).append(item)
    train, test = [], []
    for concept in sorted(by_concept):
        group = list(by_concept[concept])
        rng.shuffle(group)
        cut = len(group) * 4 // 5  # floor(0.8 n) in integers: no float rounding at n = 5k
        train += group[:cut]
        test += group[cut:]
    return sorted(train, key=lambda it: it.index), sorted(test, key=lambda it: it.index)


@dataclass
class SafeImage:
    """A benign image and what it shows (its ImageNet class in the paper)."""

    path: Path
    concept: str


def load_safe_images(folder: str | Path) -> list[SafeImage]:
    """Benign images from a folder, in a stable order, labelled by what they show.

    Layouts: ``metadata.json`` (a list of ``{image_filename, concept}``, SaferVLM's ImageNet export,
    benchmarks B.9); else one sub-folder per concept; else flat images (the concept is the file stem).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"safe image folder not found: {folder}")
    meta = folder / "metadata.json"
    if meta.is_file():
        rows = read_json(meta, "image metadata", max_bytes=1 << 30, error=InputError)
        if not isinstance(rows, list):
            raise InputError(f"{meta}: expected a list of {{image_filename, concept}}")
        try:
            return [SafeImage(folder / r["image_filename"], str(r["concept"])) for r in rows]
        except (KeyError, TypeError) as exc:
            raise InputError(f"{meta}: every entry needs image_filename and concept ({exc})") from None
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"{folder} holds no images (looked for {sorted(_IMAGE_SUFFIXES)})")
    return [SafeImage(p, p.parent.name if p.parent != folder else p.stem.replace("_", " ")) for p in images]


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


def alignment_label(record: dict) -> str:
    """``Safe`` or ``Unsafe``: the record's ``alignment_label``, else its safety level (0 = Safe)."""
    label = record.get("alignment_label")
    if label is None:
        label = "Safe" if record["safety"]["level"] == 0 else "Unsafe"
    if label not in ALIGNMENT_LABELS:
        raise InputError(f"record {record.get('id')}: alignment_label must be Safe or Unsafe, got {label!r}")
    return label


def alignment_split_records(
    data_dir: str | Path,
    out_dir: str | Path,
    split: str,
    safe_dir: str | Path | None = None,
    *,
    seed: int = 0,
    split_seed: int = PAPER_SPLIT_SEED,
    mapping: Mapping[str, tuple[int, str]] | None = None,
) -> list[dict]:
    """The RL alignment data of the paper (benchmarks B.8): one record per image of ``split``.

    Unsafe images come from `split_per_concept`; safe images from ``safe_dir`` (`load_safe_images`),
    shuffled with ``split_seed``, split 80/20 and truncated to the unsafe count of the split. Each
    image gets one of the five alignment prompts drawn with ``seed`` and an empty answer (RL
    generates its own); ``alignment_label`` is Safe/Unsafe, ``concept`` lowercased as in the paper
    (``unsafe_concept`` verbatim, for the text-only prompts),
    ``safety`` the (level, type) of ``mapping`` (safe images: level 0, safe).
    """
    from ..taxonomy import SAFE_LABEL
    from .format import image_problem, make_record, relative_image

    if split not in ("train", "test"):
        raise ConfigError(f"split must be train or test, got {split!r}")
    mapping = UNSAFE_CONCEPTS_CATEGORY_LABELS if mapping is None else mapping
    out = Path(out_dir)
    train, test = split_per_concept(load_unsafe_concepts(data_dir).items, split_seed)
    unsafe = train if split == "train" else test
    rng = random.Random(seed)
    records = []
    for item in unsafe:
        if item.category not in mapping:
            raise InputError(f"no (level, type) for UnsafeConcepts category {item.category!r} in the mapping")
        image = copy_unsafe_image(item, out)
        if image is None:
            continue
        record = make_record(item.id, image, rng.choice(ALIGNMENT_PROMPTS), "", *mapping[item.category])
        records.append(
            {
                **record,
                "alignment_label": "Unsafe",
                "concept": item.concept.lower(),
                "unsafe_concept": item.concept,
                "category": item.category,
            }
        )
    if safe_dir is not None:
        safe = load_safe_images(safe_dir)
        random.Random(split_seed).shuffle(safe)
        cut = len(safe) * 4 // 5
        chosen = safe[:cut][: len(train)] if split == "train" else safe[cut:][: len(test)]
        if len(chosen) < len(unsafe):
            logger.warning("only %d safe images for %d unsafe ones in the %s split", len(chosen), len(unsafe), split)
        for n, image in enumerate(chosen):
            problem = image_problem(image.path)
            if problem:
                logger.warning("safe image %s skipped: %s", image.path, problem)
                continue
            record = make_record(
                f"safe-{split}-{n}", relative_image(image.path, out), rng.choice(ALIGNMENT_PROMPTS), "", *SAFE_LABEL
            )
            records.append({**record, "alignment_label": "Safe", "concept": image.concept.lower(), "category": "safe"})
    return records
