"""Guard-proxy mode: allowed and hinted chat requests go on to an OpenAI-compatible upstream server.

The gate's decision is made locally (vision-only scorer); a hint is placed in the last
user message the way the gate places it in the user's turn (after the question); the
upstream's answer comes back with our ``safety`` object added. Refusals never get here.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import RemoteError
from ..policy import SafetyDecision
from ..safe_files import MAX_JSON_BYTES, parse_json
from .metrics import ServerMetrics
from .protocol import ApiError, safety_object


def chat_url(base_url: str) -> str:
    """``http://host:8000`` or ``http://host:8000/v1`` -> the chat completions URL."""
    base = base_url.rstrip("/")
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


def with_hint(messages: list[dict[str, Any]], hint: str) -> list[dict[str, Any]]:
    """A copy of the messages with the hint after the text of the last user message."""
    out = copy.deepcopy(messages)
    last = next(m for m in reversed(out) if m.get("role") == "user")
    if isinstance(last.get("content"), str):
        last["content"] = f"{last['content']} {hint}"  # LLaVA's template joins a turn's texts with a space
    else:
        last["content"] = list(last["content"]) + [{"type": "text", "text": hint}]
    return out


def upstream_error(message: str, status: int = 502, code: str = "upstream_error") -> ApiError:
    """An upstream failure: 502 (bad answer, unreachable) or 504 (deadline), in OpenAI's error shape."""
    return ApiError(status, message, type_="upstream_error", code=code)


def timed_out(deadline_s: float) -> ApiError:
    return upstream_error(f"the upstream server did not answer within {deadline_s:g} s", 504, "upstream_timeout")


def checked_completion(data: Any) -> dict[str, Any]:
    """An upstream chat completion, or a 502 when it is not the shape OpenAI answers with."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise upstream_error(
            f"the upstream server answered with a {type(data).__name__}, not a chat completion object",
            code="upstream_bad_response",
        )
    return data


class Upstream:
    """The upstream server: one pooled HTTP client, a fixed URL, an optional model name and key.

    Every call has an overall deadline (``timeout_s``, and no later than the request's own deadline):
    a trickling upstream cannot hold a request longer by sending a byte now and then.
    """

    def __init__(
        self,
        base_url: str,
        metrics: ServerMetrics,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self.url = chat_url(base_url)
        self.model = model
        self.metrics = metrics
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(timeout=timeout_s, headers=headers)

    async def close(self) -> None:
        await self.client.aclose()

    async def chat(
        self, body: dict[str, Any], decision: SafetyDecision, hint: str | None, stream: bool, deadline: float
    ) -> Response:
        """Forward one chat request; return its (streaming) response with ``safety`` added. ``deadline``:
        the request's own (``time.monotonic()``), the upstream call ends by then too."""
        body = dict(body)
        if hint:
            body["messages"] = with_hint(body["messages"], hint)
        if self.model:
            body["model"] = self.model
        safety = safety_object(decision)
        deadline = min(deadline, time.monotonic() + self.timeout_s)
        budget = deadline - time.monotonic()
        request = self.client.build_request("POST", self.url, json=body)
        try:
            async with asyncio.timeout(budget):
                response = await self.client.send(request, stream=True)
        except TimeoutError:
            self.metrics.upstream.labels("timeout").inc()
            raise timed_out(budget) from None
        except httpx.HTTPError as exc:
            self.metrics.upstream.labels("error").inc()
            raise upstream_error(
                f"the upstream server failed: {type(exc).__name__}: {exc}", code="upstream_unavailable"
            ) from None
        self.metrics.upstream.labels(str(response.status_code)).inc()
        if response.status_code != 200 or not stream:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    content = await _read_capped(response, MAX_JSON_BYTES)
            except TimeoutError:
                raise timed_out(budget) from None
            except httpx.HTTPError as exc:
                raise upstream_error(f"reading the upstream answer failed: {type(exc).__name__}: {exc}") from None
            finally:
                await response.aclose()
            if response.status_code != 200:
                status = response.status_code if 400 <= response.status_code < 500 else 502
                raise ApiError(
                    status,
                    f"the upstream server answered HTTP {response.status_code}: "
                    f"{content[:500].decode(errors='replace')}",
                    type_="upstream_error",
                    code="upstream_error",
                )
            data = checked_completion(_upstream_json(content, "the upstream server's answer"))
            data["safety"] = safety
            return JSONResponse(data)
        return StreamingResponse(
            _relay(response, safety, deadline, budget),
            media_type="text/event-stream",
            background=BackgroundTask(response.aclose),
        )


async def _relay(
    response: httpx.Response, safety: dict[str, Any], deadline: float, budget: float
) -> AsyncIterator[str]:
    """Relay server-sent events, adding ``safety`` to the chunk that carries the finish reason. A broken
    stream (not JSON, wrong shape, cut off, past the deadline) ends with an OpenAI error event."""
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
            async for event in _events(response, safety):
                yield event
    except TimeoutError:
        yield _error_event(timed_out(budget))
    except ApiError as exc:
        yield _error_event(exc)
    except httpx.HTTPError as exc:
        yield _error_event(upstream_error(f"the upstream stream broke off: {type(exc).__name__}: {exc}"))


async def _events(response: httpx.Response, safety: dict[str, Any]) -> AsyncIterator[str]:
    done = False
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            done = True
            yield "data: [DONE]\n\n"
            continue
        chunk = _upstream_json(payload, "an event of the upstream stream")
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
            raise upstream_error("the upstream stream sent an event that is not a chat completion chunk")
        if any(isinstance(c, dict) and c.get("finish_reason") for c in chunk["choices"]):
            chunk["safety"] = safety
        yield f"data: {json.dumps(chunk)}\n\n"
    if not done:
        raise upstream_error("the upstream stream ended without [DONE]")


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """The upstream body, refused (502) past ``limit`` bytes instead of held whole in memory."""
    parts, size = [], 0
    async for part in response.aiter_bytes():
        size += len(part)
        if size > limit:
            raise upstream_error(f"the upstream answer is larger than {limit} bytes", code="upstream_bad_response")
        parts.append(part)
    return b"".join(parts)


def _upstream_json(payload: str | bytes, what: str) -> Any:
    """One JSON value from the upstream through the project's one JSON loader (depth cap, no RecursionError);
    anything else is a 502 naming ``what``."""
    try:
        return parse_json(payload, what, error=RemoteError)
    except RemoteError as exc:
        raise upstream_error(f"{exc} (starts {payload[:200]!r})", code="upstream_bad_response") from None


def _error_event(error: ApiError) -> str:
    return f"data: {json.dumps(error.body())}\n\n"
