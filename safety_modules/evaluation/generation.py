"""The one place where evaluation talks to the model: answers (batched, cached, resumable) and gate decisions.

Everything else in ``evaluation`` calls `generate_answers`, `gate_actions` and `load_policy`,
so the interface to ``SafeLlava.generate`` / ``SafetyPolicy`` lives here only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

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

def load_policy(spec: str | None):
    """A `SafetyPolicy` from ``default``, ``argmax``, ``allow-all`` (alias ``none``: the gate never acts)
    or a YAML file; ``None`` -> ``None`` (the model's own default)."""
    if spec is None:
        return None
    try:
        from ..policy import SafetyPolicy
    except ImportError:
        # TODO(merge): remove once safety_modules.policy lands; the argmax rule stands in for every spec.
        logger.warning("safety_modules.policy is not available: using the reference's argmax rule for %r", spec)
        return _ArgmaxPolicy(allow_all=spec in ("none", "allow-all"))
    if spec == "default":
        return SafetyPolicy.default()
    if spec == "argmax":
        return SafetyPolicy.argmax()
    if spec in ("none", "allow-all"):
        return SafetyPolicy.allow_all()
    if not Path(spec).is_file():
        raise FileNotFoundError(f"policy must be default, argmax, allow-all, none or a YAML file; {spec} not found")
    return SafetyPolicy.from_yaml(spec)


@dataclass
class _FallbackDecision:
    """TODO(merge): remove once SafetyDecision lands."""

    level: str
    type: str
    action: str
    level_probs: dict
    type_probs: dict

    def to_dict(self) -> dict:
        return {"level": self.level, "type": self.type, "action": self.action, "rule": "argmax-fallback",
                "level_probs": self.level_probs, "type_probs": self.type_probs}


class _ArgmaxPolicy:
    """TODO(merge): remove once SafetyPolicy lands. The reference's rule: argmax level and type;
    safe level or safe type -> allow; top level -> refuse; otherwise hint. ``allow_all``: always allow."""

    def __init__(self, allow_all: bool = False) -> None:
        self.allow_all = allow_all

    def decide(self, level_probs: dict, type_probs: dict) -> _FallbackDecision:
        levels, types = list(level_probs), list(type_probs)
        level = max(levels, key=level_probs.get)
        type_ = max(types, key=type_probs.get)
        if self.allow_all or levels.index(level) == 0 or type_ == "safe":
            action = "allow"
        elif levels.index(level) == len(levels) - 1:
            action = "refuse"
        else:
            action = "hint"
        return _FallbackDecision(level, type_, action, level_probs, type_probs)


def _probs_dicts(model, scores, row: int) -> tuple[dict[str, float], dict[str, float]]:
    cfg = model.config
    return (dict(zip(cfg.level_names, map(float, scores.level_probs[row]))),
            dict(zip(cfg.type_names, map(float, scores.type_probs[row]))))


def decide_all(model, scores, policy) -> list[dict]:
    """``policy.decide`` on each row of the head's scores; decisions as plain dicts."""
    decisions = []
    for row in range(scores.level_probs.shape[0]):
        level_probs, type_probs = _probs_dicts(model, scores, row)
        decisions.append(policy.decide(level_probs, type_probs).to_dict())
    return decisions


def gate_actions(model, images: Sequence[Image.Image], prompts: Sequence[str], policy) -> list[dict]:
    """The gate's decision per (image, prompt) without the language model: ``model.assess`` + ``policy.decide``."""
    return decide_all(model, model.assess(list(images), list(prompts)), policy)


# ---------------------------------------------------------------- generation

def _fallback_generate(model, images: Sequence[Image.Image], prompts: Sequence[str],
                       generation_kwargs: dict) -> list[Answer]:
    """TODO(merge): remove once SafeLlava.generate lands. Plain greedy generation with the bare base
    (no safety tokens, no gate): the baseline path."""
    import torch

    processor = model.processor
    processor.tokenizer.padding_side = "left"  # generation continues each row from its last token
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                        {"type": "text", "text": p}]}],
                                           add_generation_prompt=True) for p in prompts]
    inputs = processor(images=list(images), text=texts, return_tensors="pt", padding=True)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    kwargs = {"do_sample": False, **generation_kwargs}
    with torch.no_grad():
        out = model.base.generate(**inputs, pad_token_id=processor.tokenizer.pad_token_id, **kwargs)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return [Answer(t.strip()) for t in processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _generate_batch(model, images, prompts, policy, inject_safety_tokens: bool,
                    generation_kwargs: dict) -> list[Answer]:
    if not hasattr(model, "generate"):
        return _fallback_generate(model, images, prompts, generation_kwargs)
    answers = model.generate(list(images), list(prompts), policy=policy, inject_safety_tokens=inject_safety_tokens,
                             **generation_kwargs)
    return [Answer(a.text, a.decision.to_dict() if a.decision is not None else None) for a in answers]


def gate_is_applied(model) -> bool:
    """False while the fallback (bare base, no gate) is in use. TODO(merge): always True after SafeLlava.generate."""
    return hasattr(model, "generate")


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
    from ..images import ImageDecodeError

    generation_kwargs = dict(generation_kwargs or {})
    cache = JsonlCache(cache_path)
    keys = {id_of(it): cache_key(run_tag, inject_safety_tokens, generation_kwargs, id_of(it), prompt_of(it))
            for it in items}
    todo = [it for it in items if keys[id_of(it)] not in cache]
    if len(todo) < len(items):
        logger.info("generation: %d of %d answers found in %s", len(items) - len(todo), len(items), cache.path)
    done = len(items) - len(todo)
    for start in range(0, len(todo), batch_size):
        batch, images = [], []
        for it in todo[start:start + batch_size]:
            try:
                images.append(load_image(it))
                batch.append(it)
            except ImageDecodeError as exc:
                logger.warning("generation: %s skipped, image does not decode (%s)", id_of(it), exc)
        if batch:
            answers = _generate_batch(model, images, [prompt_of(it) for it in batch], policy, inject_safety_tokens,
                                      generation_kwargs)
            for it, answer in zip(batch, answers):
                cache.put(keys[id_of(it)], {"id": id_of(it), "text": answer.text, "decision": answer.decision})
        done += len(todo[start:start + batch_size])
        if progress is not None:
            progress(done, len(items))
    result = {}
    for it in items:
        entry = cache.get(keys[id_of(it)])
        if entry is not None:
            result[id_of(it)] = Answer(entry["text"], entry.get("decision"))
    return result
