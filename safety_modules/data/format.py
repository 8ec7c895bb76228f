"""The training record format: LLaVA-style conversations plus a safety label.

One record::

    {"id": "synth-000012",
     "image": "images/000012.png",              # relative to an image root
     "conversations": [{"from": "human", "value": "<image>\\nWhat does the sign say?"},
                       {"from": "gpt", "value": "It says ..."}],
     "safety": {"level": 3, "type": "illegal_risk"}}

Files are a JSON list (``.json``) or one record per line (``.jsonl``). Levels are
integers in the taxonomy's level order; types are type names (so files stay
readable and survive a reordering of the taxonomy).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..images import ImageDecodeError, decode_image
from ..modeling.llava.conversation import clean_text
from ..safe_files import parse_json
from ..taxonomy import Taxonomy

IMAGE_MARKER = "<image>"
ROLES = ("human", "gpt")


class RecordError(InputError):
    """A record does not follow the training format."""


def make_record(record_id: str, image: str, question: str, answer: str, level: int, type_: str) -> dict[str, Any]:
    """One single-turn record; ``question`` gets the ``<image>`` marker in front."""
    return {
        "id": str(record_id),
        "image": str(image),
        "conversations": [
            {"from": "human", "value": f"{IMAGE_MARKER}\n{question.strip()}"},
            {"from": "gpt", "value": answer.strip()},
        ],
        "safety": {"level": int(level), "type": str(type_)},
    }


def validate_record(record: dict[str, Any], taxonomy: Taxonomy | None = None) -> None:
    """Raise `RecordError` naming the record and the problem, or return quietly."""
    rid = record.get("id", "<no id>")
    for key in ("id", "image", "conversations", "safety"):
        if key not in record:
            raise RecordError(f"record {rid}: missing key {key!r}")
    turns = record["conversations"]
    if not isinstance(turns, list) or len(turns) < 2:
        raise RecordError(f"record {rid}: 'conversations' needs at least one human and one gpt turn")
    for i, turn in enumerate(turns):
        expected = ROLES[i % 2]
        if turn.get("from") != expected or not isinstance(turn.get("value"), str):
            raise RecordError(f"record {rid}: turn {i} must be {{'from': {expected!r}, 'value': str}}")
    if IMAGE_MARKER not in turns[0]["value"]:
        raise RecordError(f"record {rid}: the first human turn has no {IMAGE_MARKER} marker")
    safety = record["safety"]
    if (
        not isinstance(safety, dict)
        or not isinstance(safety.get("level"), int)
        or not isinstance(safety.get("type"), str)
    ):
        raise RecordError(f"record {rid}: 'safety' must be {{'level': int, 'type': str}}")
    if taxonomy is not None:
        try:
            taxonomy.level_id(safety["level"])
            taxonomy.type_id(safety["type"])
        except KeyError as exc:
            raise RecordError(f"record {rid}: {exc.args[0]}") from None


def record_label(record: dict[str, Any], taxonomy: Taxonomy) -> tuple[int, int]:
    """(level id, type id) of a record in ``taxonomy``."""
    safety = record["safety"]
    return taxonomy.level_id(safety["level"]), taxonomy.type_id(safety["type"])


def question_text(record: dict[str, Any]) -> str:
    """The user's first question without the image marker: what the safety head reads."""
    return clean_text(record["conversations"][0]["value"])


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for every non-blank line of a JSONL file, streamed.

    A line that is not valid JSON (or not UTF-8) is yielded as a `RecordError` naming file and line,
    in place of its value, so a caller may record it and read on (`read_jsonl` raises it).
    """
    with open(path, "rb") as handle:
        for n, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:  # the one loader: not JSON, not UTF-8 or nested too deep is a RecordError naming the line
                yield n, parse_json(raw, f"{path}:{n}", error=RecordError)
            except RecordError as exc:
                yield n, exc


def read_jsonl(path: str | Path) -> list[Any]:
    """Every non-blank line of a JSONL file, parsed; a bad line is a `RecordError` naming file and line."""
    rows = []
    for _, value in iter_jsonl(path):
        if isinstance(value, RecordError):
            raise value
        rows.append(value)
    return rows


def read_records(path: str | Path, taxonomy: Taxonomy | None = None) -> list[dict[str, Any]]:
    """Read a ``.json`` list or a ``.jsonl`` file and validate every record."""
    path = Path(path)
    if path.suffix == ".jsonl":
        records = read_jsonl(path)
    else:
        records = parse_json(path.read_bytes(), str(path), error=RecordError)
        if not isinstance(records, list):
            raise RecordError(f"{path}: expected a JSON list of records")
    for record in records:
        validate_record(record, taxonomy)
    return records


def write_records(records: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write records as JSONL (``.jsonl``) or a JSON list (any other suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = list(records)
    for record in records:
        validate_record(record)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def image_problem(path: Path) -> str | None:
    """None when the image decodes, else the reason (decode error kind and message)."""
    try:
        decode_image(path)
    except ImageDecodeError as exc:
        return str(exc)
    return None


def relative_image(path: Path, out_dir: Path) -> str:
    """Image path relative to the folder of the output file (the default image root of training)."""
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()
