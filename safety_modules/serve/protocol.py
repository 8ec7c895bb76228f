"""OpenAI request and response shapes as pydantic models (as vLLM's ``protocol.py`` has them), plus our
``safety`` object and API errors.

Requests are validated by the models; the app turns any `pydantic.ValidationError` into one OpenAI
error body (`validation_error`). Unknown fields are tolerated (clients send ``user``, ``metadata``,
...), a known field of the wrong type or range is a 400 naming it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator

from ..errors import SafeVLMError
from ..gate import GatedAnswer
from ..modeling.llava.conversation import Prompt
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
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def validation_error(exc: ValidationError) -> ApiError:
    """A pydantic validation error as a 400: the first problem, its field path as ``param``."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    message = f"{param}: {first['msg']}" if param else first["msg"]
    more = len(exc.errors()) - 1
    return bad_request(message + (f" (and {more} more)" if more else ""), param, "invalid_request")


# ---------------------------------------------------------------------- requests


class OpenAIBase(BaseModel):
    """Unknown fields are kept, not refused: OpenAI clients and gateways send more than we read."""

    model_config = ConfigDict(extra="allow")


class ImageURL(OpenAIBase):
    url: str = Field(min_length=1)
    detail: str | None = None


class TextPart(OpenAIBase):
    type: Literal["text"]
    text: str


class ImagePart(OpenAIBase):
    type: Literal["image_url"]
    image_url: ImageURL | Annotated[str, Field(min_length=1)]

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


@dataclass
class Input:
    """One thing to score or answer: its text (``""`` when none) and at most one image URL."""

    text: str
    image_url: str | None


def content_input(content: str | list[ContentPart] | None, where: str) -> Input:
    """A message content -> its text (parts joined with a space, as LLaVA's template joins them) and image."""
    if content is None:  # e.g. an assistant turn that only called tools
        return Input("", None)
    if isinstance(content, str):
        return Input(content, None)
    texts = [part.text for part in content if isinstance(part, TextPart)]
    images = [part.url for part in content if isinstance(part, ImagePart)]
    if len(images) > 1:
        raise bad_request(
            f"{where} has {len(images)} images; LLaVA-1.5 takes one image per conversation", where, "too_many_images"
        )
    return Input(" ".join(texts), images[0] if images else None)


class ChatMessage(OpenAIBase):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(OpenAIBase):
    include_usage: StrictBool = False


Temperature = Annotated[float, Field(ge=0.0, le=2.0, strict=True)]
TopP = Annotated[float, Field(ge=0.0, le=1.0, strict=True)]


class ChatCompletionRequest(OpenAIBase):
    """``POST /v1/chat/completions``: what we read of OpenAI's request."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: StrictInt | None = None
    stop: str | list[str] | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.n is not None and self.n != 1:
            raise ValueError("only n=1 is supported")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > 4 or not all(stops):
            raise ValueError("'stop' must be a non-empty string or a list of at most 4 of them")
        return self

    def sampling(self, default_max_tokens: int, max_tokens_limit: int) -> Sampling:
        """The generation settings; ``max_completion_tokens`` wins over ``max_tokens``."""
        if self.logprobs or self.top_logprobs is not None:
            param = "logprobs" if self.logprobs else "top_logprobs"
            raise bad_request("logprobs are not supported by this server", param, "logprobs_unsupported")
        key = "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"
        max_tokens = getattr(self, key)
        if max_tokens is None:
            max_tokens = default_max_tokens
        elif max_tokens > max_tokens_limit:
            raise bad_request(f"'{key}' must be an integer in [1, {max_tokens_limit}], got {max_tokens}", key)
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return Sampling(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=tuple(stop),
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def image_url(self) -> str | None:
        """The conversation's one image (in any user message), or None; more than one is a 400."""
        images = []
        for i, message in enumerate(self.messages):
            found = content_input(message.content, f"messages[{i}].content").image_url
            if found and message.role != "user":
                raise bad_request(f"messages[{i}] ({message.role}) has an image; only user messages may", "messages")
            images += [found] if found else []
        if len(images) > 1:
            raise bad_request(
                f"the conversation has {len(images)} images; LLaVA-1.5 takes one image per conversation",
                "messages",
                "too_many_images",
            )
        return images[0] if images else None

    def conversation(self) -> Prompt:
        """The messages as the gate's prompt: the question alone, or `conversation.render` turns (system
        text first, then user / assistant turns; consecutive messages of one role are joined)."""
        system: list[str] = []
        turns: list[dict[str, str]] = []
        for i, message in enumerate(self.messages):
            text = content_input(message.content, f"messages[{i}].content").text
            if message.role in ("system", "developer"):
                if turns:
                    raise bad_request(
                        f"messages[{i}]: a {message.role} message must come before the conversation "
                        "(LLaVA's format has one system prompt, at the start)",
                        "messages",
                        "unsupported_messages",
                    )
                system.append(text)
                continue
            role = "human" if message.role == "user" else "gpt"
            if not turns and role == "gpt":
                raise bad_request("the conversation must start with a user message", "messages", "unsupported_messages")
            if turns and turns[-1]["from"] == role:
                turns[-1]["value"] += " " + text
            else:
                turns.append({"from": role, "value": text})
        if not turns or turns[-1]["from"] != "human":
            raise bad_request("the conversation must end with a user message", "messages", "unsupported_messages")
        if not system and len(turns) == 1:
            return turns[0]["value"]
        head = [{"from": "system", "value": " ".join(system)}] if system else []
        return head + turns


class ModerationRequest(OpenAIBase):
    """``POST /v1/moderations``: a string, a list of strings (one result each), or content parts (one result)."""

    model: str | None = None
    input: str | list[str] | list[ContentPart]

    def inputs(self) -> list[Input]:
        if isinstance(self.input, str):
            return [Input(self.input, None)]
        if not self.input:
            raise bad_request("'input' must not be empty", "input")
        if all(isinstance(v, str) for v in self.input):
            if len(self.input) > MAX_MODERATION_INPUTS:
                raise bad_request(
                    f"'input' has {len(self.input)} strings; at most {MAX_MODERATION_INPUTS} per request",
                    "input",
                    "too_many_inputs",
                )
            return [Input(v, None) for v in self.input if isinstance(v, str)]
        parts = [v for v in self.input if not isinstance(v, str)]
        return [content_input(parts, "input")]


MAX_MODERATION_INPUTS = 128  # strings per moderation request: one request must not hold the model loop for long


# ---------------------------------------------------------------------- responses


def safety_object(decision: SafetyDecision) -> dict[str, Any]:
    """The gate's decision as JSON: probabilities, level, type, action, rule, policy, hint, ..."""
    return decision.to_dict()


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float | None]
    category_applied_input_types: dict[str, list[str]]
    safety: dict[str, Any]


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


def moderation_result(decision: SafetyDecision, taxonomy: Taxonomy, applied: list[str]) -> ModerationResult:
    """One OpenAI moderation result: our risk types are the categories; ``flagged`` = the policy did not allow.

    ``category_scores`` are the head's type probabilities; a category is true when it is the type the
    policy acted on. ``applied`` lists the input types the score reads ("image", "text").
    """
    flagged = decision.action != "allow"
    types = taxonomy.risk_types
    return ModerationResult(
        flagged=flagged,
        categories={t: flagged and decision.type == t for t in types},
        category_scores={t: decision.type_probs.get(t) for t in types},
        category_applied_input_types={t: list(applied) for t in types},
        safety=safety_object(decision),
    )


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


class Usage(BaseModel):
    """Token counts: the language model's input (text, image and safety tokens) and the generated tokens
    (0 when the gate answered instead of the model)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, answer: GatedAnswer) -> Usage:
        prompt = answer.prompt_tokens or 0
        completion = len(answer.token_ids) if answer.token_ids is not None else 0
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    safety: dict[str, Any]


class ChunkChoice(BaseModel):
    index: int = 0
    delta: dict[str, Any]
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    safety: dict[str, Any] | None = None


def chat_completion(
    id_: str, model: str, text: str, reason: str, decision: SafetyDecision, usage: Usage | None
) -> dict[str, Any]:
    choice = Choice(message=ResponseMessage(content=text), finish_reason=reason)
    response = ChatCompletionResponse(
        id=id_, model=model, choices=[choice], usage=usage, safety=safety_object(decision)
    )
    return response.model_dump(exclude={"usage"} if usage is None else set())


def chat_chunk(
    id_: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    reason: str | None = None,
    decision: SafetyDecision | None = None,
    with_usage_field: bool = False,
) -> dict[str, Any]:
    """One streamed chunk; the last one carries ``finish_reason`` and the ``safety`` decision.
    ``with_usage_field``: ``usage: null`` is sent on every chunk when the client asked for usage (as OpenAI does)."""
    chunk = ChatCompletionChunk(
        id=id_,
        model=model,
        created=created,
        choices=[ChunkChoice(delta=delta, finish_reason=reason)],
        safety=None if decision is None else safety_object(decision),
    )
    exclude = ({"safety"} if decision is None else set()) | (set() if with_usage_field else {"usage"})
    return chunk.model_dump(exclude=exclude)


def usage_chunk(id_: str, model: str, created: int, usage: Usage) -> dict[str, Any]:
    """The final chunk of a stream with ``stream_options.include_usage``: no choices, the usage."""
    return ChatCompletionChunk(id=id_, model=model, created=created, choices=[], usage=usage).model_dump(
        exclude={"safety"}
    )


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
