"""Reading RTVLM items from a local snapshot of ``MMInstruction/RedTeamingVLM`` (raw JSONL + image zips).

The dataset's own loading script is not used (recent ``datasets`` no longer runs scripts,
and it imports a removed module). Nothing is lost silently: a subset whose files are
missing, and every row that cannot be used, is listed with the reason and logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import ConfigError, InputError
from ...images import decode_image
from .files import ImageIndex, extract_zip, find_file
from .subsets import ROW_RULES, SUBSETS, SUBTASKS, Subset, row_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RTVLMItem:
    """One question about one image (two for the order subtasks)."""

    id: str
    subtask: str
    subset: str
    question: str
    images: tuple[Path, ...]
    label: str  # the row's gold behaviour (``refused_to_answer``): Refuse / Proceed with Caution / Safe to Answer
    reference: str = ""  # short reference answer where the subset has one
    topic: str = ""


@dataclass
class RTVLMData:
    """Loaded items, the subsets whose files are missing and the rows that could not be used (each with why)."""

    items: list[RTVLMItem] = field(default_factory=list)
    missing_subsets: list[str] = field(default_factory=list)
    skipped_rows: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Everything not read, one line each: missing subsets first, then skipped rows."""
        return self.missing_subsets + self.skipped_rows

    def counts(self) -> dict[str, int]:
        """Items per subtask, in table order."""
        return {name: sum(1 for it in self.items if it.subtask == name) for name in SUBTASKS}

    def summary(self) -> str:
        """``"N rows skipped, M subsets missing (a, b)"`` for logs and the CLI."""
        missing = [line.split(":", 1)[0] for line in self.missing_subsets]
        return f"{len(self.skipped_rows)} rows skipped, {len(missing)} subsets missing" + (
            f" ({', '.join(missing)})" if missing else ""
        )


class RTVLMFormatError(InputError):
    """The snapshot is not laid out as the published dataset."""


def load_rtvlm(
    snapshot_dir: str | Path,
    cache_dir: str | Path | None = None,
    subtasks: Iterable[str] | None = None,
    split: str = "all",
    seed: int = 0,
    train_fraction: float = 0.8,
    include_extra: bool = False,
) -> RTVLMData:
    """Read the RTVLM items of a local snapshot (``huggingface-cli download MMInstruction/RedTeamingVLM``).

    Image zips are extracted once under ``cache_dir`` (default ``<snapshot>/.extracted``). Rows that
    cannot be used (missing fields, unknown label, missing image, a duplicate of an item already read)
    are skipped and listed in ``skipped_rows``; subsets whose files are absent in ``missing_subsets``.
    ``include_extra`` also reads the subsets outside the published table (``Jailbreak2``, for training).
    ``split`` is ``"all"``, ``"train"`` or ``"test"`` (a seeded per-subtask split, see `split_items`).
    """
    snapshot = Path(snapshot_dir)
    if not snapshot.is_dir():
        raise FileNotFoundError(f"RTVLM snapshot folder not found: {snapshot}")
    cache = Path(cache_dir) if cache_dir is not None else snapshot / ".extracted"
    wanted = list(subtasks) if subtasks is not None else list(SUBTASKS)
    unknown = sorted(set(wanted) - set(SUBTASKS))
    if unknown:
        raise ConfigError(f"unknown RTVLM subtasks {unknown}; known: {list(SUBTASKS)}")
    data = RTVLMData()
    found_any = False
    for subset in SUBSETS:
        if subset.subtask not in wanted or (subset.extra and not include_extra):
            continue
        own = Path(subset.jsonl).parent.as_posix()
        jsonl = find_file(snapshot, subset.jsonl, own, ".jsonl")
        archives = [find_file(snapshot, z, own if z.startswith(own + "/") else z, ".zip") for z in subset.zips]
        if jsonl is None or not any(archives):
            missing = subset.jsonl if jsonl is None else " or ".join(subset.zips)
            data.missing_subsets.append(f"{subset.name}: {missing} not found in the snapshot; subset not read")
            continue
        found_any = True
        folders = []
        for archive in (a for a in archives if a is not None):
            folder = cache / archive.relative_to(snapshot).as_posix().replace("/", "__")
            extract_zip(archive, folder)
            folders.append(folder)
        _read_subset(subset, jsonl, ImageIndex(folders), data)
    if not found_any:
        raise RTVLMFormatError(
            f"{snapshot} holds none of the RTVLM files (expected e.g. {SUBSETS[0].jsonl}); "
            "download it with: huggingface-cli download MMInstruction/RedTeamingVLM --repo-type dataset --local-dir DIR"
        )
    for problem in data.problems:
        logger.warning("RTVLM: %s", problem)
    if data.problems:
        logger.warning("RTVLM: %s", data.summary())
    data.items = split_items(data.items, split, seed=seed, train_fraction=train_fraction)
    return data


def _read_subset(subset: Subset, jsonl: Path, index: ImageIndex, data: RTVLMData) -> None:
    rule = ROW_RULES[subset.rule]
    seen = {(it.images, it.question): it.id for it in data.items if it.subtask == subset.subtask}
    with open(jsonl, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{subset.name} {jsonl.name}:{line_no}"
            try:
                row = json.loads(line)
                expanded = rule(row)
            except (json.JSONDecodeError, KeyError, ValueError, TypeError, RecursionError) as exc:  # deep nesting too
                data.skipped_rows.append(f"{where}: unusable row ({type(exc).__name__}: {exc}); skipped")
                continue
            key = row_key(row, line_no)
            for suffix, candidate_lists, question, label, reference, topic in expanded:
                paths = [index.find(candidates) for candidates in candidate_lists]
                if any(p is None for p in paths):
                    names = [c[0] for c, p in zip(candidate_lists, paths) if p is None]
                    data.skipped_rows.append(f"{where}: image {', '.join(names)} not in the zip; skipped")
                    continue
                images, question = tuple(paths), question.strip()
                if (images, question) in seen:  # Jailbreak2 repeats some Jailbreak rows
                    data.skipped_rows.append(
                        f"{where}: same image and question as {seen[images, question]}; duplicate skipped"
                    )
                    continue
                item_id = f"{subset.name}-{line_no}-{key}" + (f"-{suffix}" if suffix else "")
                seen[images, question] = item_id
                data.items.append(
                    RTVLMItem(
                        item_id,
                        subset.subtask,
                        subset.name,
                        question,
                        images,
                        str(label),
                        str(reference),
                        topic or subset.name,
                    )
                )


def split_items(
    items: list[RTVLMItem], split: str = "all", seed: int = 0, train_fraction: float = 0.8
) -> list[RTVLMItem]:
    """A seeded train/test split per subtask, by image, so no image is in both parts.

    ``split="all"`` returns the items unchanged. The paper split RTVLM 80/20 at random; its split
    was not published, so this one is ours (same seed and fraction -> same split).
    """
    if split == "all":
        return list(items)
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'all', 'train' or 'test', got {split!r}")
    if not 0.0 < train_fraction < 1.0:
        raise ConfigError(f"train_fraction must be in (0, 1), got {train_fraction}")
    keep: list[RTVLMItem] = []
    for subtask in SUBTASKS:
        group_items = [it for it in items if it.subtask == subtask]
        groups = sorted({tuple(str(p.name) for p in it.images) for it in group_items})
        order = np.random.default_rng(seed).permutation(len(groups))
        n_train = int(round(train_fraction * len(groups)))
        train_groups = {groups[i] for i in order[:n_train]}
        for it in group_items:
            in_train = tuple(str(p.name) for p in it.images) in train_groups
            if in_train == (split == "train"):
                keep.append(it)
    return keep


def load_item_image(item: RTVLMItem) -> Image.Image:
    """The item's image as RGB; two images (order subtasks) side by side on white, first on the left."""
    images = [decode_image(path) for path in item.images]
    if len(images) == 1:
        return images[0]
    height = max(img.height for img in images)
    scaled = [img.resize((max(1, round(img.width * height / img.height)), height)) for img in images]
    gap = max(8, height // 20)
    canvas = Image.new("RGB", (sum(img.width for img in scaled) + gap * (len(scaled) - 1), height), "white")
    x = 0
    for img in scaled:
        canvas.paste(img, (x, 0))
        x += img.width + gap
    return canvas
