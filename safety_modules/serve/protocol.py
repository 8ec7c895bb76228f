"""OpenAI request shapes in, OpenAI response shapes out (plus our ``safety`` object), and API errors."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import SafeVLMError
from ..gate import GatedAnswer
from ..policy import SafetyDecision
from ..taxonomy import Taxonomy
from .model_runner import Sampling


class ApiError(SafeVLMError):
    """A request the server answers with an OpenAI-style error JSON and a 4xx/5xx status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass
class Input:
    """One thing to score or answer: its text (``""`` when none) and at most one image URL."""

    text: str
    image_url: str | None


@dataclass
class ChatRequest:
    """A parsed chat request: the user's question and image, sampling settings, the raw body (for proxying)."""

    input: Input
    sampling: Sampling
    stream: bool
    model: str
    body: dict[str, Any]


def _content_parts(content: Any, where: str) -> Input:
    """A message content (string or list of text / image_url parts) -> text and the one image URL."""
    if isinstance(content, str):
        return Input(content, None)
    if content is None:  # e.g. an assistant turn that only called tools
        return Input("", None)
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of content parts", where)
    texts, images = [], []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
            raise bad_request(f"{where}[{i}] must be a part of type 'text' or 'image_url'", f"{where}[{i}]")
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{where}[{i}].text must be a string", f"{where}[{i}].text")
            texts.append(part["text"])
        else:
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise bad_request(f"{where}[{i}].image_url.url must be a non-empty string", f"{where}[{i}].image_url")
            images.append(url)
    if len(images) > 1:
        raise bad_request(
            f"{where} has {len(images)} images; LLaVA-1.5 takes one image per conversation", where, "too_many_images"
        )
    # LLaVA's chat template joins a turn's text parts with a space.
    return Input(" ".join(texts), images[0] if images else None)


MAX_MODERATION_INPUTS = 128  # strings per moderation request: one request must not hold the model loop for long


def parse_moderation(body: Any) -> list[Input]:
    """``input``: a string, a list of strings (one result each) or a list of content parts (one result)."""
    if not isinstance(body, dict) or "input" not in body:
        raise bad_request("the request needs an 'input'", "input")
    value = body["input"]
    if isinstance(value, str):
        return [Input(value, None)]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        if len(value) > MAX_MODERATION_INPUTS:
            raise bad_request(
                f"'input' has {len(value)} strings; at most {MAX_MODERATION_INPUTS} per request",
                "input",
                "too_many_inputs",
            )
        return [Input(v, None) for v in value]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_content_parts(value, "input")]
    raise bad_request(
        "'input' must be a string, a non-empty list of strings, or a non-empty list of content parts", "input"
    )


def parse_chat(body: Any, default_max_tokens: int, max_tokens_limit: int, single_turn: bool) -> ChatRequest:
    """Validate a chat request. ``single_turn``: the local gate answers one user turn (no history)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "developer"):
            raise bad_request(f"messages[{i}] needs a role of system, developer, user or assistant", f"messages[{i}]")
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise bad_request("the conversation has no user message", "messages")
    parsed = [_content_parts(m.get("content"), f"messages[{i}].content") for i, m in enumerate(messages)]
    images = [p.image_url for p in parsed if p.image_url]
    if len(images) > 1:
        raise bad_request(
            f"the conversation has {len(images)} images; LLaVA-1.5 takes one image per conversation",
            "messages",
            "too_many_images",
        )
    if single_turn and len(messages) > 1:
        raise bad_request(
            "this server answers a single user message (the gate renders one turn with LLaVA's "
            f"template); got roles {[m['role'] for m in messages]}",
            "messages",
            "unsupported_messages",
        )
    last_user = parsed[users[-1]]
    return ChatRequest(
        Input(last_user.text, images[0] if images else None),
        _sampling(body, default_max_tokens, max_tokens_limit),
        _flag(body, "stream"),
        str(body.get("model") or ""),
        body,
    )


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"'{key}' must be true or false", key)
    return bool(value)


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise bad_request(f"'{key}' must be a number in [{low}, {high}], got {value!r}", key)
    return float(value)


def _sampling(body: dict[str, Any], default_max_tokens: int, max_tokens_limit: int) -> Sampling:
    if body.get("n", 1) != 1:
        raise bad_request("only n=1 is supported", "n")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key)
    if max_tokens is None:
        max_tokens = default_max_tokens
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= max_tokens_limit:
        raise bad_request(f"'{key}' must be an integer in [1, {max_tokens_limit}], got {max_tokens!r}", key)
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else stop or ()
    if not isinstance(stops, (list, tuple)) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise bad_request("'stop' must be a non-empty string or a list of at most 4 of them", "stop")
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        stop=tuple(stops),
    )


# ---------------------------------------------------------------------- responses


def safety_object(decision: SafetyDecision) -> dict[str, Any]:
    """The gate's decision as JSON: probabilities, level, type, action, rule, policy, hint, ..."""
    return decision.to_dict()


def moderation_result(decision: SafetyDecision, taxonomy: Taxonomy, applied: list[str]) -> dict[str, Any]:
    """One OpenAI moderation result: our risk types are the categories; ``flagged`` = the policy did not allow.

    ``category_scores`` are the head's type probabilities; a category is true when it is the type the
    policy acted on. ``applied`` lists the input types the score reads ("image", "text").
    """
    flagged = decision.action != "allow"
    types = taxonomy.risk_types
    return {
        "flagged": flagged,
        "categories": {t: flagged and decision.type == t for t in types},
        "category_scores": {t: decision.type_probs.get(t) for t in types},
        "category_applied_input_types": {t: list(applied) for t in types},
        "safety": safety_object(decision),
    }


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def truncate_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` cut before the first stop string (OpenAI leaves the stop sequence out); True when cut."""
    cuts = [text.find(s) for s in stops if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def finish_reason(answer: GatedAnswer, sampling: Sampling, stopped: bool) -> str:
    """``content_filter`` when the gate answered instead of the model, ``length`` at the token cap, else ``stop``."""
    if answer.token_ids is None:
        return "content_filter"
    if not stopped and len(answer.token_ids) >= sampling.max_tokens:
        return "length"
    return "stop"


def chat_completion(
    id_: str, model: str, text: str, reason: str, decision: SafetyDecision, usage: dict[str, int] | None
) -> dict[str, Any]:
    body = {
        "id": id_,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason, "logprobs": None}
        ],
        "safety": safety_object(decision),
    }
    if usage is not None:
        body["usage"] = usage
    return body


def chat_chunk(
    id_: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    reason: str | None = None,
    decision: SafetyDecision | None = None,
) -> dict[str, Any]:
    """One streamed chunk; the last one carries ``finish_reason`` and the ``safety`` decision."""
    chunk = {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}],
    }
    if decision is not None:
        chunk["safety"] = safety_object(decision)
    return chunk


class StopFilter:
    """Streams text while holding back what could be the start of a stop string."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of the text so far that is safe to send now ("" once a stop string was seen)."""
        if self.stopped:
            return ""
        self.buffer += text
        cut, self.stopped = truncate_at_stop(self.buffer, self.stops)
        if self.stopped:
            self.buffer = ""
            return cut
        longest = min(max((len(s) - 1 for s in self.stops), default=0), len(self.buffer))
        hold = next((k for k in range(longest, 0, -1) if any(s.startswith(self.buffer[-k:]) for s in self.stops)), 0)
        out, self.buffer = self.buffer[: len(self.buffer) - hold], self.buffer[len(self.buffer) - hold :]
        return out

    def finish(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out
