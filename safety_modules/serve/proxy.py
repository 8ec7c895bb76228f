"""Guard-proxy mode: allowed and hinted chat requests go on to an OpenAI-compatible upstream server.

The gate's decision is made locally (vision-only scorer); a hint is placed in the last
user message the way the gate places it in the user's turn (after the question); the
upstream's answer comes back with our ``safety`` object added. Refusals never get here.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, StreamingResponse

from ..policy import SafetyDecision
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


class Upstream:
    """The upstream server: one pooled HTTP client, a fixed URL, an optional model name and key."""

    def __init__(
        self,
        base_url: str,
        metrics: ServerMetrics,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        self.url = chat_url(base_url)
        self.model = model
        self.metrics = metrics
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(timeout=timeout_s, headers=headers)

    async def close(self) -> None:
        await self.client.aclose()

    async def chat(self, body: dict[str, Any], decision: SafetyDecision, hint: str | None, stream: bool):
        """Forward one chat request; return its (streaming) response with ``safety`` added."""
        body = dict(body)
        if hint:
            body["messages"] = with_hint(body["messages"], hint)
        if self.model:
            body["model"] = self.model
        safety = safety_object(decision)
        request = self.client.build_request("POST", self.url, json=body)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.metrics.upstream.labels("error").inc()
            raise ApiError(
                502,
                f"the upstream server failed: {type(exc).__name__}: {exc}",
                type_="upstream_error",
                code="upstream_unavailable",
            ) from None
        self.metrics.upstream.labels(str(response.status_code)).inc()
        if response.status_code != 200:
            content = await response.aread()
            await response.aclose()
            status = response.status_code if 400 <= response.status_code < 500 else 502
            raise ApiError(
                status,
                f"the upstream server answered HTTP {response.status_code}: {content[:500].decode(errors='replace')}",
                type_="upstream_error",
                code="upstream_error",
            )
        if not stream:
            try:
                data = json.loads(await response.aread())
            finally:
                await response.aclose()
            data["safety"] = safety
            return JSONResponse(data)
        return StreamingResponse(
            _add_safety(response, safety), media_type="text/event-stream", background=BackgroundTask(response.aclose)
        )


async def _add_safety(response: httpx.Response, safety: dict[str, Any]) -> AsyncIterator[str]:
    """Relay server-sent events, adding ``safety`` to the chunk that carries the finish reason."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload != "[DONE]":
            chunk = json.loads(payload)
            if any(c.get("finish_reason") for c in chunk.get("choices", [])):
                chunk["safety"] = safety
            payload = json.dumps(chunk)
        yield f"data: {payload}\n\n"
