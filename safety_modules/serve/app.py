"""The FastAPI app: OpenAI-compatible moderations and guarded chat, models, health, metrics, the web page."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import httpx
import torch
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from ..errors import ConfigError
from ..images import blank_image
from .batching import AsyncTextStreamer, Batcher
from .inputs import InputLimits, decode, fetch_image_bytes, read_json
from .metrics import ServerMetrics
from .model_runner import ModelRunner
from .protocol import (
    ApiError,
    ChatRequest,
    Input,
    StopFilter,
    bad_request,
    chat_chunk,
    chat_completion,
    finish_reason,
    moderation_result,
    new_id,
    parse_chat,
    parse_moderation,
    truncate_at_stop,
)
from .proxy import Upstream

logger = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """Everything `create_app` needs besides the runner."""

    model_name: str
    limits: InputLimits = field(default_factory=InputLimits)
    api_key: str | None = None
    max_batch: int = 16
    max_wait_ms: float = 10.0
    default_max_tokens: int = 256
    max_tokens_limit: int = 2048
    upstream: str | None = None
    upstream_model: str | None = None
    upstream_api_key: str | None = None


class Server:
    """The state behind the routes: runner, batching loop, metrics, limits, optional upstream."""

    def __init__(self, runner: ModelRunner, config: ServeConfig) -> None:
        if config.upstream is None and not runner.can_generate:
            raise ConfigError("this runner cannot generate: give an upstream server (proxy mode)")
        self.runner, self.config, self.limits = runner, config, config.limits
        self.metrics = ServerMetrics()
        self.batcher = Batcher(runner, config.max_batch, config.max_wait_ms / 1000.0, self.metrics)
        self.upstream = (
            Upstream(config.upstream, self.metrics, config.upstream_model, config.upstream_api_key)
            if config.upstream
            else None
        )
        self.http = httpx.AsyncClient() if self.limits.allow_remote_images else None
        # Text-only input is scored (and answered) with the blank image, as the evaluation does.
        self.blank_pixels = runner.preprocess(blank_image())

    def check_auth(self, request: Request) -> None:
        if self.config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), self.config.api_key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key (send 'Authorization: Bearer <key>')",
                type_="authentication_error",
                code="invalid_api_key",
            )

    async def pixels(self, item: Input) -> torch.Tensor:
        """Fetch, decode and preprocess the input's image in worker threads (never in the model loop)."""
        if item.image_url is None:
            return self.blank_pixels
        data = await fetch_image_bytes(item.image_url, self.limits, self.http)
        image = await run_in_threadpool(decode, data, self.limits)
        return await run_in_threadpool(self.runner.preprocess, image)

    def check_prompt(self, text: str, param: str) -> None:
        problem = self.runner.prompt_problem(text)
        if problem:
            raise bad_request(problem, param)

    # ------------------------------------------------------------------ endpoints

    async def moderations(self, body: Any) -> dict[str, Any]:
        items = parse_moderation(body)
        for item in items:
            self.check_prompt(item.text, "input")
            if item.image_url is None and not self.runner.scores_text:
                raise bad_request(
                    "this server's scorer is vision-only (proxy mode): it cannot score text-only input",
                    "input",
                    "text_not_scored",
                )
        pixels = await asyncio.gather(*(self.pixels(item) for item in items))
        prompts = [item.text if self.runner.scores_text else "" for item in items]
        decisions = await asyncio.gather(*(self.batcher.score(p, t) for p, t in zip(pixels, prompts)))
        results = []
        for item, decision in zip(items, decisions):
            applied = (["image"] if item.image_url else []) + (
                ["text"] if item.text and self.runner.scores_text else []
            )
            results.append(moderation_result(decision, self.runner.taxonomy, applied))
            self.metrics.requests.labels("moderations", decision.action).inc()
        return {"id": new_id("modr"), "model": self.config.model_name, "results": results}

    async def chat(self, body: Any) -> Response:
        req = parse_chat(
            body, self.config.default_max_tokens, self.config.max_tokens_limit, single_turn=self.upstream is None
        )
        self.check_prompt(req.input.text, "messages")
        pixels = await self.pixels(req.input)
        model = req.model or self.config.model_name
        if self.upstream is not None:
            decision = await self.batcher.score(pixels, req.input.text if self.runner.scores_text else "")
            self.metrics.requests.labels("chat_completions", decision.action).inc()
            if decision.action != "refuse":
                return await self.upstream.chat(req.body, decision, self.runner.hint_text(decision), req.stream)
            return self._refusal(req, model, decision)
        if req.stream:
            return StreamingResponse(self._stream(req, pixels, model), media_type="text/event-stream")
        answer = await self.batcher.generate(pixels, req.input.text, req.sampling)
        self.metrics.requests.labels("chat_completions", answer.decision.action).inc()
        text, stopped = truncate_at_stop(answer.text, req.sampling.stop)
        reason = finish_reason(answer, req.sampling, stopped)
        return JSONResponse(chat_completion(new_id("chatcmpl"), model, text, reason, answer.decision, None))

    def _refusal(self, req: ChatRequest, model: str, decision) -> Response:
        """A refusal answered here (proxy mode): the upstream is never called."""
        id_ = new_id("chatcmpl")
        if not req.stream:
            return JSONResponse(chat_completion(id_, model, decision.refusal, "content_filter", decision, None))
        created = int(time.time())
        chunks = [
            chat_chunk(id_, model, created, {"role": "assistant", "content": ""}),
            chat_chunk(id_, model, created, {"content": decision.refusal}),
            chat_chunk(id_, model, created, {}, "content_filter", decision),
        ]
        return StreamingResponse(_sse(chunks), media_type="text/event-stream")

    async def _stream(self, req: ChatRequest, pixels: torch.Tensor, model: str) -> AsyncIterator[str]:
        """Server-sent events: the text as it is generated, then the finish reason and the decision."""
        id_, created = new_id("chatcmpl"), int(time.time())
        streamer = AsyncTextStreamer(self.runner.tokenizer, asyncio.get_running_loop())
        future = self.batcher.generate(pixels, req.input.text, req.sampling, streamer)
        try:
            async for event in self._events(req, streamer, future, id_, created, model):
                yield event
        finally:
            if not future.done():  # the client went away: stop generating for it
                streamer.cancelled = True
                self.metrics.cancelled.inc()

    async def _events(
        self, req: ChatRequest, streamer: AsyncTextStreamer, future: asyncio.Future, id_: str, created: int, model: str
    ) -> AsyncIterator[str]:
        yield _event(chat_chunk(id_, model, created, {"role": "assistant", "content": ""}))
        # The non-streamed answer is stripped: leading whitespace is dropped, trailing whitespace
        # is held back until more text follows, so the streamed text joins to the same string.
        stops, started, held = StopFilter(req.sampling.stop), False, ""
        while (text := await streamer.texts.get()) is not None:
            out = held + stops.feed(text)
            if not started:
                out = out.lstrip()
                started = bool(out)
            body = out.rstrip()
            held = out[len(body) :]
            if body:
                yield _event(chat_chunk(id_, model, created, {"content": body}))
        tail = (held + stops.finish()).rstrip() if started else stops.finish().strip()
        if tail:
            yield _event(chat_chunk(id_, model, created, {"content": tail}))
        try:
            answer = await future
        except Exception as exc:
            logger.exception("streamed generation failed")
            yield _event(ApiError(500, f"generation failed: {type(exc).__name__}", type_="server_error").body())
            return
        self.metrics.requests.labels("chat_completions", answer.decision.action).inc()
        reason = finish_reason(answer, req.sampling, stops.stopped)
        yield _event(chat_chunk(id_, model, created, {}, reason, answer.decision))
        yield "data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _sse(chunks: list[dict[str, Any]]) -> AsyncIterator[str]:
    for chunk in chunks:
        yield _event(chunk)
    yield "data: [DONE]\n\n"


def create_app(runner: ModelRunner, config: ServeConfig) -> FastAPI:
    """The app; its model loop starts and stops with the app's lifespan."""
    server = Server(runner, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.batcher.start()
        try:
            yield
        finally:
            server.batcher.stop()
            if server.upstream is not None:
                await server.upstream.close()
            if server.http is not None:
                await server.http.aclose()

    app = FastAPI(title="safevlm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        if 400 <= exc.status < 500:
            server.metrics.client_errors.labels(str(exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        server.metrics.client_errors.labels(str(exc.status_code)).inc()
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        error = ApiError(500, f"internal error: {type(exc).__name__}", type_="server_error")
        return JSONResponse(error.body(), status_code=500)

    def timed(endpoint: str):
        return server.metrics.latency.labels(endpoint).time()

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> JSONResponse:
        server.check_auth(request)
        with timed("moderations"):
            return JSONResponse(await server.moderations(await read_json(request, server.limits)))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        server.check_auth(request)
        with timed("chat_completions"):  # for streams: time to the first byte
            return await server.chat(await read_json(request, server.limits))

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.check_auth(request)
        return {
            "object": "list",
            "data": [{"id": config.model_name, "object": "model", "created": 0, "owned_by": "safevlm"}],
        }

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = server.batcher.alive
        body = {
            "status": "ok" if ok else "model loop stopped",
            "model": config.model_name,
            "mode": "proxy" if server.upstream else "local",
            "queue_depth": server.batcher.depth,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        server.check_auth(request)
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    page = (resources.files("safety_modules.serve") / "static" / "index.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app
