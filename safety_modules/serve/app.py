"""The FastAPI app: OpenAI-compatible moderations and guarded chat, models, health, metrics, the web page."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import httpx
import torch
from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigError
from ..gate.limits import PromptTooLong
from ..images import blank_image
from ..modeling.llava.conversation import Prompt, prompt_turns
from ..policy import SafetyDecision
from .batching import AsyncTextStreamer, Batcher, QueueFull
from .inputs import InputLimits, decode, fetch_image_bytes, read_json
from .metrics import ServerMetrics
from .model_runner import ModelRunner
from .protocol import (
    ApiError,
    ChatCompletionRequest,
    Input,
    ModerationRequest,
    ModerationResponse,
    StopFilter,
    Usage,
    bad_request,
    chat_chunk,
    chat_completion,
    finish_reason,
    moderation_result,
    new_id,
    truncate_at_stop,
    usage_chunk,
    validation_error,
)
from .proxy import Upstream

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("safety_modules.serve.access")

#: OpenAI's moderation model names, accepted on /v1/moderations by default so client code runs unchanged.
OPENAI_MODERATION_MODELS = ("omni-moderation-latest", "text-moderation-latest")


@dataclass
class ServeConfig:
    """Everything `create_app` needs besides the runner.

    ``served_names``: the model ids clients may ask for (the first is the one answers carry when a request
    names none); ``moderation_names``: more ids accepted on /v1/moderations. ``max_queue``: requests
    waiting for the model at most (then 429); ``request_timeout_s``: the deadline of one request, queueing
    included (then 504); ``upstream_timeout_s``: the overall deadline of one upstream call (proxy mode).
    """

    served_names: tuple[str, ...]
    moderation_names: tuple[str, ...] = OPENAI_MODERATION_MODELS
    limits: InputLimits = field(default_factory=InputLimits)
    api_key: str | None = None
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    request_timeout_s: float = 300.0
    default_max_tokens: int = 256
    max_tokens_limit: int = 2048
    upstream: str | None = None
    upstream_model: str | None = None
    upstream_api_key: str | None = None
    upstream_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.served_names:
            raise ConfigError("the server needs at least one served model name")
        if self.request_timeout_s <= 0 or self.upstream_timeout_s <= 0:
            raise ConfigError("timeouts must be > 0 seconds")

    @property
    def model_name(self) -> str:
        return self.served_names[0]


class Server:
    """The state behind the routes: runner, batching loop, metrics, limits, optional upstream."""

    def __init__(self, runner: ModelRunner, config: ServeConfig) -> None:
        if config.upstream is None and not runner.can_generate:
            raise ConfigError("this runner cannot generate: give an upstream server (proxy mode)")
        self.runner, self.config, self.limits = runner, config, config.limits
        self.metrics = ServerMetrics()
        self.batcher = Batcher(runner, config.max_batch, config.max_wait_ms / 1000.0, self.metrics, config.max_queue)
        self.upstream = (
            Upstream(
                config.upstream, self.metrics, config.upstream_model, config.upstream_api_key, config.upstream_timeout_s
            )
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

    def check_model(self, name: str | None, moderation: bool) -> str:
        """The model id to answer with; an unknown one is a 404 ``model_not_found`` (as OpenAI answers)."""
        if not name:
            return self.config.model_name
        known = self.config.served_names + (self.config.moderation_names if moderation else ())
        if name not in known:
            raise ApiError(
                404,
                f"The model '{name}' does not exist; this server serves {list(known)}",
                param="model",
                code="model_not_found",
            )
        return name

    async def pixels(self, image_url: str | None) -> torch.Tensor:
        """Fetch, decode and preprocess the input's image in worker threads (never in the model loop)."""
        if image_url is None:
            return self.blank_pixels
        data = await fetch_image_bytes(image_url, self.limits, self.http)
        image = await run_in_threadpool(decode, data, self.limits)
        return await run_in_threadpool(self.runner.preprocess, image)

    async def check_prompt(self, prompt: Prompt, param: str, chat: bool) -> None:
        """No image placeholder in any turn; not over the prompt-token limit (counted in a worker thread)."""
        for turn in prompt_turns(prompt):
            if problem := self.runner.prompt_problem(turn["value"]):
                raise bad_request(problem, param)
        try:
            await run_in_threadpool(self.runner.check_length, prompt, chat)
        except PromptTooLong as exc:
            raise bad_request(str(exc), param, "context_length_exceeded") from None

    def submit(self, queue_job: Callable[[], asyncio.Future]) -> asyncio.Future:
        """Queue work on the batcher: 503 when its loop is not running, 429 with Retry-After when it is full."""
        if not self.batcher.alive:
            raise ApiError(503, "the model loop is not running", type_="server_error", headers={"Retry-After": "5"})
        try:
            return queue_job()
        except QueueFull as exc:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(
                429,
                f"{exc}; retry after {exc.retry_after_s} s",
                type_="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None

    async def run(self, queue_job: Callable[[], asyncio.Future], deadline: float) -> Any:
        """Queue work and wait for it until ``deadline`` (then 504; the batcher drops or stops the job)."""
        future = self.submit(queue_job)
        try:
            return await asyncio.wait_for(future, max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            self.metrics.rejected.labels("deadline").inc()
            raise ApiError(
                504,
                f"the request did not finish within {self.config.request_timeout_s:g} s",
                type_="server_error",
                code="request_timeout",
            ) from None

    def deadline(self) -> float:
        return time.monotonic() + self.config.request_timeout_s

    # ------------------------------------------------------------------ endpoints

    async def moderations(self, body: Any, state: State) -> dict[str, Any]:
        deadline = self.deadline()
        req = ModerationRequest.model_validate(body)
        model = self.check_model(req.model, moderation=True)
        items = req.inputs()
        for item in items:
            await self.check_prompt(item.text, "input", chat=False)
            if item.image_url is None and not self.runner.scores_text:
                raise bad_request(
                    "this server's scorer is vision-only (proxy mode): it cannot score text-only input",
                    "input",
                    "text_not_scored",
                )
        pixels = await asyncio.gather(*(self.pixels(item.image_url) for item in items))
        decisions = await asyncio.gather(
            *(self.run(lambda p=p, i=i: self._score(p, i), deadline) for p, i in zip(pixels, items))
        )
        results = []
        for item, decision in zip(items, decisions):
            applied = (["image"] if item.image_url else []) + (
                ["text"] if item.text and self.runner.scores_text else []
            )
            results.append(moderation_result(decision, self.runner.taxonomy, applied))
            self.metrics.requests.labels("moderations", decision.action).inc()
        state.decision = ",".join(d.action for d in decisions)
        return ModerationResponse(id=new_id("modr"), model=model, results=results).model_dump()

    def _score(self, pixels: torch.Tensor, item: Input) -> asyncio.Future:
        text = item.text if self.runner.scores_text else ""
        return self.batcher.score(pixels, text, text_only=item.image_url is None)

    async def chat(self, body: Any, state: State) -> Response:
        deadline = self.deadline()
        req = ChatCompletionRequest.model_validate(body)
        model = self.check_model(req.model, moderation=False)
        sampling = req.sampling(self.config.default_max_tokens, self.config.max_tokens_limit)
        image_url = req.image_url()
        text_only = image_url is None
        if self.upstream is not None:
            # Proxy mode: the upstream renders the conversation; here only the image is scored.
            pixels = await self.pixels(image_url)
            decision = await self.run(lambda: self.batcher.score(pixels, "", text_only=text_only), deadline)
            self.metrics.requests.labels("chat_completions", decision.action).inc()
            state.decision = decision.action
            if decision.action != "refuse":
                return await self.upstream.chat(
                    body,
                    decision,
                    self.runner.hint_text(decision),
                    bool(req.stream),
                    deadline,
                )
            return self._refusal(req, model, decision)
        prompt = req.conversation()
        await self.check_prompt(prompt, "messages", chat=True)
        pixels = await self.pixels(image_url)
        if req.stream:
            streamer = AsyncTextStreamer(self.runner.tokenizer, asyncio.get_running_loop())
            future = self.submit(lambda: self.batcher.generate(pixels, prompt, sampling, streamer, text_only))
            return StreamingResponse(
                self._stream(req, streamer, future, model, state, deadline), media_type="text/event-stream"
            )
        answer = await self.run(lambda: self.batcher.generate(pixels, prompt, sampling, text_only=text_only), deadline)
        self.metrics.requests.labels("chat_completions", answer.decision.action).inc()
        state.decision = answer.decision.action
        text, stopped = truncate_at_stop(answer.text, sampling.stop)
        reason = finish_reason(answer, sampling, stopped)
        usage = Usage.of(answer)
        return JSONResponse(chat_completion(new_id("chatcmpl"), model, text, reason, answer.decision, usage))

    def _refusal(self, req: ChatCompletionRequest, model: str, decision: SafetyDecision) -> Response:
        """A refusal answered here (proxy mode): the upstream is never called."""
        id_ = new_id("chatcmpl")
        refusal = decision.refusal or ""
        usage = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)  # no model read or wrote anything
        if not req.stream:
            return JSONResponse(chat_completion(id_, model, refusal, "content_filter", decision, usage))
        created = int(time.time())
        with_usage = req.include_usage
        chunks = [
            chat_chunk(id_, model, created, {"role": "assistant", "content": ""}, with_usage_field=with_usage),
            chat_chunk(id_, model, created, {"content": refusal}, with_usage_field=with_usage),
            chat_chunk(id_, model, created, {}, "content_filter", decision, with_usage_field=with_usage),
        ]
        if with_usage:
            chunks.append(usage_chunk(id_, model, created, usage))
        return StreamingResponse(_sse(chunks), media_type="text/event-stream")

    async def _stream(
        self,
        req: ChatCompletionRequest,
        streamer: AsyncTextStreamer,
        future: asyncio.Future,
        model: str,
        state: State,
        deadline: float,
    ) -> AsyncIterator[str]:
        """Server-sent events: the text as it is generated, then the finish reason and the decision."""
        try:
            async for event in self._events(req, streamer, future, model, state, deadline):
                yield event
        finally:
            if not future.done():  # the client went away (or the deadline passed): stop generating for it
                streamer.cancelled = True
                self.metrics.cancelled.inc()
                logger.info("stream closed before its end: generation stopped")

    async def _events(
        self,
        req: ChatCompletionRequest,
        streamer: AsyncTextStreamer,
        future: asyncio.Future,
        model: str,
        state: State,
        deadline: float,
    ) -> AsyncIterator[str]:
        id_, created = new_id("chatcmpl"), int(time.time())
        with_usage = req.include_usage
        sampling = req.sampling(self.config.default_max_tokens, self.config.max_tokens_limit)

        def chunk(delta: dict[str, Any], reason: str | None = None, decision: SafetyDecision | None = None) -> str:
            return _event(chat_chunk(id_, model, created, delta, reason, decision, with_usage_field=with_usage))

        yield chunk({"role": "assistant", "content": ""})
        # The non-streamed answer is stripped: leading whitespace is dropped, trailing whitespace
        # is held back until more text follows, so the streamed text joins to the same string.
        stops, started, held = StopFilter(sampling.stop), False, ""
        while True:
            try:
                text = await asyncio.wait_for(streamer.texts.get(), max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                self.metrics.rejected.labels("deadline").inc()
                state.decision = "timeout"
                error = ApiError(
                    504,
                    f"the request did not finish within {self.config.request_timeout_s:g} s",
                    type_="server_error",
                    code="request_timeout",
                )
                yield _event(error.body())
                return
            if text is None:
                break
            out = held + stops.feed(text)
            if not started:
                out = out.lstrip()
                started = bool(out)
            body = out.rstrip()
            held = out[len(body) :]
            if body:
                yield chunk({"content": body})
        tail = (held + stops.finish()).rstrip() if started else stops.finish().strip()
        if tail:
            yield chunk({"content": tail})
        try:
            answer = await future
        except Exception as exc:
            logger.exception("streamed generation failed")
            state.decision = "error"
            yield _event(ApiError(500, f"generation failed: {type(exc).__name__}", type_="server_error").body())
            return
        self.metrics.requests.labels("chat_completions", answer.decision.action).inc()
        state.decision = answer.decision.action
        yield chunk({}, finish_reason(answer, sampling, stops.stopped), answer.decision)
        if with_usage:
            yield _event(usage_chunk(id_, model, created, Usage.of(answer)))
        yield "data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _sse(chunks: list[dict[str, Any]]) -> AsyncIterator[str]:
    for chunk in chunks:
        yield _event(chunk)
    yield "data: [DONE]\n\n"


class AccessLog:
    """One log line per request, once its response has ended: method, path, status, latency and the gate's
    decision (``-`` where none was made). Pure ASGI, so a stream is logged when it ends, not when it starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            decision = scope.get("state", {}).get("decision", "-")
            access_logger.info(
                "%s %s %s %d %.0fms decision=%s",
                _client(scope),
                scope["method"],
                scope["path"],
                status or 499,  # 499: the client left before any answer (nginx's convention)
                (time.perf_counter() - started) * 1000,
                decision,
            )


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


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

    def error_response(error: ApiError) -> JSONResponse:
        if 400 <= error.status < 500:
            server.metrics.client_errors.labels(str(error.status)).inc()
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(ValidationError)
    async def invalid(request: Request, exc: ValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(ApiError(exc.status_code, str(exc.detail)))

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, exc: ClientDisconnect) -> Response:
        logger.info("client disconnected during the request body of %s %s", request.method, request.url.path)
        return Response(status_code=499)  # nobody reads it: the client is gone

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
            body = await read_json(request, server.limits)
            return JSONResponse(await server.moderations(body, request.state))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        server.check_auth(request)
        with timed("chat_completions"):  # for streams: time to the first byte
            return await server.chat(await read_json(request, server.limits), request.state)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.check_auth(request)
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "safevlm"} for name in config.served_names
            ],
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

    app.add_middleware(AccessLog)
    return app


def ready_line(config: ServeConfig, url: str, mode: str) -> str:
    """What the server logs once it listens."""
    names = ", ".join(config.served_names)
    return f"safevlm serve ready on {url} (model {names}; {mode} mode; OpenAI base URL {url}/v1)"
