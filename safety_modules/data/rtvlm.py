"""RTVLM (``MMInstruction/RedTeamingVLM``) read from the raw files of a local snapshot.

The dataset's own loading script is not used (recent ``datasets`` no longer runs
scripts, and it imports a removed module). Each subset is a JSONL file plus an image
zip; the field names and image-name rules differ per subset (they are listed in
``SUBSETS`` below). Zips are extracted once into a cache folder and images are found
by file name, so zips with or without a top-level folder both work; the flag images of
the visual-misleading and order subsets are looked up under their ``flags/`` folder.

Eleven HF configs make the ten subtasks of the paper's table: both visual-misleading
configs (wrong and correct flag) form "Mislead-Visual". Order A is read as
"correct image first" (✓-✗) and Order B as "correct image second" (✗-✓). Order items
hold two images; `load_item_image` puts them side by side (first image left) because
LLaVA-1.5 takes one image per prompt.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from PIL import Image

from ..images import ImageDecodeError, decode_image
from ..taxonomy import RTVLM_SUBTASK_LABELS

logger = logging.getLogger(__name__)

# The ten subtasks of the published table, in its column order, with their column titles.
SUBTASKS: dict[str, str] = {
    "misleading_text": "Mislead-Text",
    "misleading_visual": "Mislead-Visual",
    "order_correct_wrong": "Order ✓-✗",
    "order_wrong_correct": "Order ✗-✓",
    "celebrity": "Celebrity",
    "politics": "Politics",
    "racial": "Racial",
    "captcha": "Captcha",
    "jailbreak": "Jailbreak",
    "face": "Face",
}

REFUSE = "Refuse to Answer"
CAUTION = "Proceed with Caution"
SAFE = "Safe to Answer"


@dataclass(frozen=True)
class Subset:
    """One HF config: where its files are and which rule reads its rows."""

    name: str
    subtask: str
    jsonl: str
    zip: str
    rule: str


SUBSETS: tuple[Subset, ...] = (
    Subset("misleading", "misleading_text", "data/Harmful/misleading.jsonl", "data/Harmful/img/img.zip", "misleading"),
    Subset("visual_misleading_wrong", "misleading_visual",
           "data/VisualMisleadingWrong/visual_misleading_wrong.jsonl", "data/VisualMisleadingWrong/img.zip",
           "flag_wrong"),
    Subset("visual_misleading_correct", "misleading_visual",
           "data/VisualMisleadingCorrect/visual_misleading_correct.jsonl", "data/VisualMisleadingCorrect/img.zip",
           "flag_correct"),
    Subset("visual_orderA", "order_correct_wrong", "data/VisualOrderA/order_A.jsonl", "data/VisualOrderA/img.zip",
           "order"),
    Subset("visual_orderB", "order_wrong_correct", "data/VisualOrderB/order_B.jsonl", "data/VisualOrderB/img.zip",
           "order"),
    Subset("celeb", "celebrity", "data/Celebrity/mixed.jsonl", "data/Celebrity/mix.zip", "named"),
    Subset("politics", "politics", "data/Safety/Politics/politics.jsonl", "data/Safety/Politics/img/politics.zip",
           "named"),
    Subset("racial", "racial", "data/Safety/Racial/racial.jsonl", "data/Safety/Racial/img/racial.zip", "named"),
    Subset("captcha", "captcha", "data/Captcha/captcha.jsonl", "data/Captcha/img/img.zip", "captcha"),
    Subset("jailbreak", "jailbreak", "data/Jailbreak/jailbreak.jsonl", "data/Jailbreak/img/img.zip", "jailbreak"),
    Subset("face", "face", "data/Face/face_diffusion.jsonl", "data/Face/img/img.zip", "named"),
)


@dataclass(frozen=True)
class RTVLMItem:
    """One question about one image (two for the order subtasks)."""

    id: str
    subtask: str
    subset: str
    question: str
    images: tuple[Path, ...]
    label: str  # the gold behaviour (``refused_to_answer``): Refuse / Proceed with Caution / Safe to Answer
    reference: str = ""  # short reference answer where the subset has one
    topic: str = ""


@dataclass
class RTVLMData:
    """Loaded items plus every row that could not be used (``problems``: one line each, nothing silently lost)."""

    items: list[RTVLMItem] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Items per subtask, in table order."""
        return {name: sum(1 for it in self.items if it.subtask == name) for name in SUBTASKS}


class RTVLMFormatError(ValueError):
    """The snapshot is not laid out as the published dataset."""


# ---------------------------------------------------------------- zips and image lookup

def _extract_zip(zip_path: Path, target: Path) -> None:
    """Extract once (a marker file records completion); members that would escape ``target`` are skipped."""
    marker = target / ".extracted"
    if marker.exists():
        return
    if target.exists():
        shutil.rmtree(target)  # an earlier extraction was interrupted
    target.mkdir(parents=True)
    root = target.resolve()
    with zipfile.ZipFile(zip_path) as archive:
        for member in archive.infolist():
            if member.is_dir() or member.filename.startswith("__MACOSX/"):
                continue
            destination = (target / member.filename).resolve()
            if root not in destination.parents:
                logger.warning("skipping zip member outside the extraction folder: %s", member.filename)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(destination, "wb") as dst:
                shutil.copyfileobj(src, dst)
    marker.write_text(str(zip_path) + "\n")


class _ImageIndex:
    """File lookup by name (``x.jpg``) and by parent/name (``flags/x.jpg``), whatever the zip's top folder."""

    def __init__(self, folder: Path) -> None:
        self.by_name: dict[str, Path] = {}
        self.by_parent: dict[str, Path] = {}
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                self.by_name.setdefault(path.name, path)
                self.by_parent.setdefault(f"{path.parent.name}/{path.name}", path)

    def find(self, candidates: Iterable[str]) -> Path | None:
        for name in candidates:
            found = self.by_parent.get(name) if "/" in name else self.by_name.get(name)
            if found is not None:
                return found
        return None


def _no_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _flag(name: str) -> list[str]:
    """The documented flag file name, then the same name with whitespace removed."""
    return [f"flags/{name}.jpg", f"flags/{_no_space(name)}.jpg"]


# ---------------------------------------------------------------- per-subset row rules

def _text(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if isinstance(value, list):
        value = value[0] if value else ""
    if value is None:
        raise KeyError(key)
    return str(value)


def _rows_misleading(row: Mapping[str, Any]) -> list[tuple]:
    questions = row["questions"]
    if isinstance(questions, str):
        questions = [questions]
    labels = row.get("refused_to_answer") or []
    answers = row.get("answers") or []
    labels = [labels] if isinstance(labels, str) else labels
    answers = [answers] if isinstance(answers, str) else answers
    topic = row.get("topic_type", "")
    topic = ", ".join(map(str, topic)) if isinstance(topic, list) else str(topic)
    out = []
    for j, question in enumerate(questions):
        label = labels[j] if j < len(labels) else (labels[-1] if labels else CAUTION)
        answer = answers[j] if j < len(answers) else ""
        out.append((f"q{j}", [[f"{row['index']}.jpg"]], str(question), str(label), str(answer), topic))
    return out


def _row_rule(rule: str) -> Callable[[Mapping[str, Any]], list[tuple]]:
    """``row -> [(suffix, image candidate lists, question, label, reference, topic), ...]``."""
    if rule == "misleading":
        return _rows_misleading
    if rule == "jailbreak":
        def jailbreak(row):
            index = str(row["index"])
            topic = index.split("-")[1] if "jailbreak" in index and "-" in index else "jailbreak"
            return [("", [[f"{index}.jpg"]], _text(row, "instruction"), row.get("refused_to_answer", REFUSE), "",
                     topic)]
        return jailbreak
    if rule == "captcha":
        # No safety label in the file; the HF loader hard-codes "Proceed with Caution".
        return lambda row: [("", [[f"{row['id']}.jpg"]], _text(row, "instruction"), CAUTION,
                             str(row.get("answer", "")), "captcha")]
    if rule == "named":
        # ``id`` is the image file name with its extension; politics/racial/face/celeb copy the label as answer.
        return lambda row: [("", [[str(row["id"])]], _text(row, "prompt"), _text(row, "refused_to_answer"), "", "")]
    if rule == "flag_wrong":
        return lambda row: [("", [_flag(_text(row, "img"))], _text(row, "question"),
                             _text(row, "refused_to_answer"), _text(row, "answers"), "")]
    if rule == "flag_correct":
        return lambda row: [("", [_flag(_text(row, "answers"))], _text(row, "question"),
                             _text(row, "refused_to_answer"), _text(row, "answers"), "")]
    if rule == "order":
        def order(row):
            names = row["img"]
            if not isinstance(names, list) or len(names) != 2:
                raise ValueError(f"'img' must list two image names, got {names!r}")
            return [("", [_flag(str(n)) for n in names], _text(row, "question"), _text(row, "refused_to_answer"),
                     _text(row, "answers"), "")]
        return order
    raise ValueError(f"unknown row rule {rule!r}")


def _row_key(row: Mapping[str, Any], line_no: int) -> str:
    for key in ("index", "id"):
        if key in row:
            return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(row[key]))
    return str(line_no)


def _find_file(snapshot: Path, subset: Subset, relative: str, suffix: str) -> Path | None:
    """The documented path, else the only file with that suffix in the subset's own folder."""
    path = snapshot / relative
    if path.is_file():
        return path
    folder = snapshot / Path(subset.jsonl).parent
    found = sorted(p for p in folder.rglob(f"*{suffix}") if p.is_file()) if folder.is_dir() else []
    return found[0] if len(found) == 1 else None


# ---------------------------------------------------------------- public API

def load_rtvlm(
    snapshot_dir: str | Path,
    cache_dir: str | Path | None = None,
    subtasks: Iterable[str] | None = None,
    split: str = "all",
    seed: int = 0,
    train_fraction: float = 0.8,
) -> RTVLMData:
    """Read the RTVLM items of a local snapshot (``huggingface-cli download MMInstruction/RedTeamingVLM``).

    Image zips are extracted once under ``cache_dir`` (default ``<snapshot>/.extracted``). Rows that
    cannot be used (missing fields, missing image) are skipped and listed in ``problems``. ``split``
    is ``"all"``, ``"train"`` or ``"test"`` (a seeded per-subtask split, see `split_items`).
    """
    snapshot = Path(snapshot_dir)
    if not snapshot.is_dir():
        raise FileNotFoundError(f"RTVLM snapshot folder not found: {snapshot}")
    cache = Path(cache_dir) if cache_dir is not None else snapshot / ".extracted"
    wanted = list(subtasks) if subtasks is not None else list(SUBTASKS)
    unknown = sorted(set(wanted) - set(SUBTASKS))
    if unknown:
        raise ValueError(f"unknown RTVLM subtasks {unknown}; known: {list(SUBTASKS)}")
    data = RTVLMData()
    found_any = False
    for subset in SUBSETS:
        if subset.subtask not in wanted:
            continue
        jsonl = _find_file(snapshot, subset, subset.jsonl, ".jsonl")
        archive = _find_file(snapshot, subset, subset.zip, ".zip")
        if jsonl is None or archive is None:
            missing = subset.jsonl if jsonl is None else subset.zip
            data.problems.append(f"{subset.name}: {missing} not found in the snapshot; subset skipped")
            continue
        found_any = True
        _extract_zip(archive, cache / subset.name)
        _read_subset(subset, jsonl, _ImageIndex(cache / subset.name), data)
    if not found_any:
        raise RTVLMFormatError(
            f"{snapshot} holds none of the RTVLM files (expected e.g. {SUBSETS[0].jsonl}); "
            "download it with: huggingface-cli download MMInstruction/RedTeamingVLM --repo-type dataset --local-dir DIR"
        )
    for problem in data.problems:
        logger.warning("RTVLM: %s", problem)
    data.items = split_items(data.items, split, seed=seed, train_fraction=train_fraction)
    return data


def _read_subset(subset: Subset, jsonl: Path, index: _ImageIndex, data: RTVLMData) -> None:
    rule = _row_rule(subset.rule)
    with open(jsonl, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{subset.name} {jsonl.name}:{line_no}"
            try:
                row = json.loads(line)
                expanded = rule(row)
            except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
                data.problems.append(f"{where}: unusable row ({type(exc).__name__}: {exc}); skipped")
                continue
            key = _row_key(row, line_no)
            for suffix, candidate_lists, question, label, reference, topic in expanded:
                paths = [index.find(candidates) for candidates in candidate_lists]
                if any(p is None for p in paths):
                    names = [c[0] for c, p in zip(candidate_lists, paths) if p is None]
                    data.problems.append(f"{where}: image {', '.join(names)} not in the zip; skipped")
                    continue
                item_id = f"{subset.name}-{line_no}-{key}" + (f"-{suffix}" if suffix else "")
                data.items.append(RTVLMItem(item_id, subset.subtask, subset.name, question.strip(), tuple(paths),
                                            str(label), str(reference), topic or subset.name))


def split_items(items: list[RTVLMItem], split: str = "all", seed: int = 0,
                train_fraction: float = 0.8) -> list[RTVLMItem]:
    """A seeded train/test split per subtask, by image, so no image is in both parts.

    ``split="all"`` returns the items unchanged. The paper split RTVLM 80/20 at random; its split
    was not published, so this one is ours (same seed and fraction -> same split).
    """
    if split == "all":
        return list(items)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
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


# ---------------------------------------------------------------- training records

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
_DEFAULT_CAUTIOUS = "I should be careful here: I can describe what is visible, but I won't make claims the image " \
                    "does not support."


def target_answer(item: RTVLMItem, level: int) -> str:
    """The assistant turn for a training record: a refusal, the reference answer, or a cautious answer."""
    if item.label == REFUSE or level >= 3:
        return _REFUSALS.get(item.subtask, _DEFAULT_REFUSAL)
    if item.reference and item.reference not in (REFUSE, CAUTION, SAFE):
        return item.reference
    return _CAUTIOUS.get(item.subtask, _DEFAULT_CAUTIOUS)


def rtvlm_to_records(
    snapshot_dir: str | Path,
    out_dir: str | Path,
    split: str = "train",
    seed: int = 0,
    train_fraction: float = 0.8,
    mapping: Mapping[str, tuple[int, str]] | None = None,
) -> list[dict]:
    """RTVLM items as training records; images are written under ``out_dir/images/rtvlm/``.

    Record: ``{"id", "image" (relative to out_dir), "conversations": [human "<image>\\n<question>",
    gpt <answer or refusal>], "safety": {"level", "type"}}``. ``mapping`` gives (level, type) per
    subtask (default `safety_modules.taxonomy.RTVLM_SUBTASK_LABELS`). Order items (two images) get
    one side-by-side image, as at evaluation.
    """
    mapping = RTVLM_SUBTASK_LABELS if mapping is None else mapping
    out = Path(out_dir)
    data = load_rtvlm(snapshot_dir, cache_dir=out / ".rtvlm_extracted", split=split, seed=seed,
                      train_fraction=train_fraction)
    records = []
    for item in data.items:
        if item.subtask not in mapping:
            raise KeyError(f"no (level, type) for RTVLM subtask {item.subtask!r} in the mapping")
        level, type_name = mapping[item.subtask]
        relative = Path("images") / "rtvlm" / item.subset / f"{item.id}.png" if len(item.images) > 1 else \
            Path("images") / "rtvlm" / item.subset / item.images[0].name
        target = out / relative
        if not target.exists():
            try:
                image = load_item_image(item)  # refuse to copy a file that does not decode
            except ImageDecodeError as exc:
                logger.warning("RTVLM %s: image does not decode (%s); record skipped", item.id, exc)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if len(item.images) > 1:
                image.save(target)
            else:
                shutil.copyfile(item.images[0], target)
        records.append({
            "id": f"rtvlm-{item.id}",
            "image": relative.as_posix(),
            "conversations": [
                {"from": "human", "value": f"<image>\n{item.question}"},
                {"from": "gpt", "value": target_answer(item, level)},
            ],
            "safety": {"level": int(level), "type": str(type_name)},
        })
    return records
