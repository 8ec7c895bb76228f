"""RTVLM's files: the subsets of ``MMInstruction/RedTeamingVLM``, where their files are, how their rows read.

Eleven HF configs make the ten subtasks of the published table: both visual-misleading configs
(wrong and correct flag) form "Mislead-Visual". Order A is read as "correct image first" (✓-✗)
and Order B as "correct image second" (✗-✓). ``Jailbreak2`` (21 rows reusing the Jailbreak
images; the safety paper's "Jailbreak (RTVLM), 22" training source) is no HF config and not in
the published table: it is an ``extra`` subset, read for training records, not for evaluation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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
CAUTION_OLD = "Answer with Caution"  # the older celebrity file's wording
LABELS = (REFUSE, CAUTION, SAFE, CAUTION_OLD)


@dataclass(frozen=True)
class Subset:
    """One subset: its files, the rule that reads its rows, whether the rows' own ``refused_to_answer``
    varies (and so sets a record's level, see `records`), and whether it is outside the published table."""

    name: str
    subtask: str
    jsonl: str
    zips: tuple[str, ...]
    rule: str
    row_labels: bool = False
    extra: bool = False


SUBSETS: tuple[Subset, ...] = (
    Subset(
        "misleading",
        "misleading_text",
        "data/Harmful/misleading.jsonl",
        ("data/Harmful/img/img.zip",),
        "misleading",
        row_labels=True,
    ),
    Subset(
        "visual_misleading_wrong",
        "misleading_visual",
        "data/VisualMisleadingWrong/visual_misleading_wrong.jsonl",
        ("data/VisualMisleadingWrong/img.zip",),
        "flag_wrong",
    ),
    Subset(
        "visual_misleading_correct",
        "misleading_visual",
        "data/VisualMisleadingCorrect/visual_misleading_correct.jsonl",
        ("data/VisualMisleadingCorrect/img.zip",),
        "flag_correct",
    ),
    Subset(
        "visual_orderA",
        "order_correct_wrong",
        "data/VisualOrderA/order_A.jsonl",
        ("data/VisualOrderA/img.zip",),
        "order",
    ),
    Subset(
        "visual_orderB",
        "order_wrong_correct",
        "data/VisualOrderB/order_B.jsonl",
        ("data/VisualOrderB/img.zip",),
        "order",
    ),
    Subset("celeb", "celebrity", "data/Celebrity/mixed.jsonl", ("data/Celebrity/mix.zip",), "named", row_labels=True),
    Subset(
        "politics",
        "politics",
        "data/Safety/Politics/politics.jsonl",
        ("data/Safety/Politics/img/politics.zip",),
        "named",
    ),
    Subset("racial", "racial", "data/Safety/Racial/racial.jsonl", ("data/Safety/Racial/img/racial.zip",), "named"),
    Subset("captcha", "captcha", "data/Captcha/captcha.jsonl", ("data/Captcha/img/img.zip",), "captcha"),
    Subset("jailbreak", "jailbreak", "data/Jailbreak/jailbreak.jsonl", ("data/Jailbreak/img/img.zip",), "jailbreak"),
    Subset("face", "face", "data/Face/face_diffusion.jsonl", ("data/Face/img/img.zip",), "named"),
    # Its own images if it ever ships some, else the Jailbreak zip it reuses.
    Subset(
        "jailbreak2",
        "jailbreak",
        "data/Jailbreak2/jailbreak.jsonl",
        ("data/Jailbreak2/img/img.zip", "data/Jailbreak/img/img.zip"),
        "jailbreak",
        extra=True,
    ),
)

# A row rule: row -> [(id suffix, image candidate lists, question, label, reference, topic), ...]
Expanded = list[tuple[str, list[list[str]], str, str, str, str]]


def _no_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _flag(name: str) -> list[str]:
    """The documented flag file name, then the same name with whitespace removed."""
    return [f"flags/{name}.jpg", f"flags/{_no_space(name)}.jpg"]


def _text(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if isinstance(value, list):
        value = value[0] if value else ""
    if value is None:
        raise KeyError(key)
    return str(value)


def _label(row: Mapping[str, Any], default: str | None = None) -> str:
    """The row's ``refused_to_answer``; an unknown wording is an unusable row, not a silent guess."""
    value = row.get("refused_to_answer", default)
    value = value[0] if isinstance(value, list) and value else value
    if value not in LABELS:
        raise ValueError(f"refused_to_answer {value!r} is not one of {list(LABELS)}")
    return str(value)


def _rows_misleading(row: Mapping[str, Any]) -> Expanded:
    questions = row["questions"]
    questions = [questions] if isinstance(questions, str) else questions
    labels = row.get("refused_to_answer") or []
    answers = row.get("answers") or []
    labels = [labels] if isinstance(labels, str) else labels
    answers = [answers] if isinstance(answers, str) else answers
    if len(labels) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(labels)} refused_to_answer labels")
    topic = row.get("topic_type", "")
    topic = ", ".join(map(str, topic)) if isinstance(topic, list) else str(topic)
    return [
        (
            f"q{j}",
            [[f"{row['index']}.jpg"]],
            str(question),
            _label({"refused_to_answer": labels[j]}),
            str(answers[j]) if j < len(answers) else "",
            topic,
        )
        for j, question in enumerate(questions)
    ]


def _rows_jailbreak(row: Mapping[str, Any]) -> Expanded:
    index = str(row["index"])
    topic = index.split("-")[1] if "jailbreak" in index and "-" in index else "jailbreak"
    return [("", [[f"{index}.jpg"]], _text(row, "instruction"), _label(row, REFUSE), "", topic)]


def _rows_order(row: Mapping[str, Any]) -> Expanded:
    names = row["img"]
    if not isinstance(names, list) or len(names) != 2:
        raise ValueError(f"'img' must list two image names, got {names!r}")
    return [("", [_flag(str(n)) for n in names], _text(row, "question"), _label(row), _text(row, "answers"), "")]


ROW_RULES: dict[str, Callable[[Mapping[str, Any]], Expanded]] = {
    "misleading": _rows_misleading,
    "jailbreak": _rows_jailbreak,
    # No safety label in the file; the HF loader hard-codes "Proceed with Caution".
    "captcha": lambda row: [
        ("", [[f"{row['id']}.jpg"]], _text(row, "instruction"), CAUTION, str(row.get("answer", "")), "captcha")
    ],
    # ``id`` is the image file name with its extension.
    "named": lambda row: [("", [[str(row["id"])]], _text(row, "prompt"), _label(row), "", "")],
    "flag_wrong": lambda row: [
        ("", [_flag(_text(row, "img"))], _text(row, "question"), _label(row), _text(row, "answers"), "")
    ],
    "flag_correct": lambda row: [
        ("", [_flag(_text(row, "answers"))], _text(row, "question"), _label(row), _text(row, "answers"), "")
    ],
    "order": _rows_order,
}


def row_key(row: Mapping[str, Any], line_no: int) -> str:
    """A file-name-safe key for a row (its ``index``/``id``, else its line number)."""
    for key in ("index", "id"):
        if key in row:
            return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(row[key]))
    return str(line_no)
