"""The one place where evaluation talks to the model: answers (batched, cached, resumable) and gate decisions.

Everything else in ``evaluation`` calls `generate_answers` (each answer carries the gate's decision) or
`decide_all`, so the interface to the `Gate` / ``SafetyPolicy`` lives here only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

logger = logging.getLogger(__name__)


@dataclass
class Answer:
    """A generated answer and, when the gate ran, its decision as a plain dict (``SafetyDecision.to_dict()``)."""

    text: str
    decision: dict | None = None


class JsonlCache:
    """Append-only JSONL store keyed by a string: a rerun reads it back and skips what is done.

    A line cut short by a crash is ignored on reading (that one entry is simply redone).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.entries: dict[str, dict] = {}
        # A crash can leave a last line without its newline: start the next entry on a line of its own.
        self._needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as handle:
                handle.seek(-1, 2)
                self._needs_newline = handle.read(1) != b"\n"
        if self.path.exists():
            # errors="replace": a crash can also cut a multi-byte character; that line then fails to parse.
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
                        self.entries[entry["key"]] = entry
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, value: dict) -> None:
        entry = {"key": key, **value}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                if self._needs_newline:
                    handle.write("\n")
                    self._needs_newline = False
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self.entries[key] = entry


def cache_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


# ---------------------------------------------------------------- policies


def decide_all(scores, policy) -> list[dict]:
    """``policy.decide`` on each row of the head's scores; decisions as plain dicts."""
    return [d.to_dict() for d in policy.decide_batch(scores.level_probs, scores.type_probs)]


# ---------------------------------------------------------------- generation


def _generate_batch(
    model, images, prompts, policy, inject_safety_tokens: bool, generation_kwargs: dict
) -> list[Answer]:
    from ..gate import Gate

    gate = Gate(model, policy, inject_safety_tokens=inject_safety_tokens)
    answers = gate.generate(list(images), list(prompts), **generation_kwargs)
    return [Answer(a.text, a.decision.to_dict() if a.decision is not None else None) for a in answers]


def decodable_batches(
    items: Sequence[Any],
    load_image: Callable[[Any], Image.Image],
    id_of: Callable[[Any], str],
    batch_size: int,
    what: str,
) -> Iterator[tuple[list[Any], list[Image.Image], int]]:
    """Consecutive batches of ``items`` as (items whose image decodes, their images, items consumed).

    An item whose image does not decode is logged (with ``what`` and its id) and left out.
    """
    from ..images import ImageDecodeError

    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch, images = [], []
        for item in chunk:
            try:
                images.append(load_image(item))
                batch.append(item)
            except ImageDecodeError as exc:
                logger.warning("%s: %s skipped, image does not decode (%s)", what, id_of(item), exc)
        yield batch, images, len(chunk)


def generate_answers(
    model,
    items: Sequence[Any],
    *,
    load_image: Callable[[Any], Image.Image],
    prompt_of: Callable[[Any], str],
    id_of: Callable[[Any], str],
    cache_path: str | Path,
    run_tag: dict,
    policy=None,
    inject_safety_tokens: bool = True,
    batch_size: int = 8,
    generation_kwargs: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Answer]:
    """Answers for every item, by item id; batched, and cached in ``cache_path`` (JSONL) so a rerun resumes.

    ``run_tag`` names what produced the answers (base, safety, policy, settings): it is part of
    each cache key, so changing the model or the settings never reuses a stale answer. Items whose
    image does not decode are reported and left out of the result.
    """
    generation_kwargs = dict(generation_kwargs or {})
    cache = JsonlCache(cache_path)
    keys = {
        id_of(it): cache_key(run_tag, inject_safety_tokens, generation_kwargs, id_of(it), prompt_of(it)) for it in items
    }
    todo = [it for it in items if keys[id_of(it)] not in cache]
    if len(todo) < len(items):
        logger.info("generation: %d of %d answers found in %s", len(items) - len(todo), len(items), cache.path)
    done = len(items) - len(todo)
    for batch, images, consumed in decodable_batches(todo, load_image, id_of, batch_size, "generation"):
        if batch:
            answers = _generate_batch(
                model, images, [prompt_of(it) for it in batch], policy, inject_safety_tokens, generation_kwargs
            )
            for it, answer in zip(batch, answers):
                cache.put(keys[id_of(it)], {"id": id_of(it), "text": answer.text, "decision": answer.decision})
        done += consumed
        if progress is not None:
            progress(done, len(items))
    result = {}
    for it in items:
        entry = cache.get(keys[id_of(it)])
        if entry is not None:
            result[id_of(it)] = Answer(entry["text"], entry.get("decision"))
    return result
