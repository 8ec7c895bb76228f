"""Dynamic batching: one thread owns the model; requests queue up and run in groups.

Request handlers (asyncio) put `Job`s on a queue and await their futures. The loop
thread takes the first job, waits at most ``max_wait_s`` for more (up to ``max_batch``),
then runs one runner call per group: all scoring jobs together, and generation jobs
together when they share their `Sampling` settings. A streaming job runs alone (a
transformers streamer follows one sequence). The gate itself decides per row; refused
rows never reach the language model. If a group call fails, its jobs are retried one
by one, so one bad request cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.stopping_criteria import (
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from ..errors import ConfigError
from .metrics import ServerMetrics
from .model_runner import ModelRunner, Sampling

logger = logging.getLogger(__name__)

BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def call_in_loop(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    """Hand a callback to the request side's event loop; a loop already closed (shutdown) is skipped,
    so the model thread never dies of it."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        logger.debug("event loop closed: a result was dropped")


class AsyncTextStreamer(BaseStreamer):
    """A transformers streamer that hands decoded text to an asyncio queue (``None`` ends the stream).

    It decodes the tokens so far and sends what is new, except for a trailing run of byte tokens
    (``<0xNN>``): a byte-fallback tokenizer decodes such a run as a whole (an invalid run turns
    every byte into U+FFFD, even an ASCII one), so that text is final only once the run ends.
    The pieces then join to exactly the final decoded text.
    """

    def __init__(self, tokenizer: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.tokenizer = tokenizer
        self.loop = loop
        self.texts: asyncio.Queue[str | None] = asyncio.Queue()
        self._tokens: list[int] = []
        self._sent = 0
        self._prompt_seen = False
        # Set from the event loop when the client went away; read by the model thread between steps.
        self.cancelled = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate hands over the prompt first (empty for input embeddings)
            self._prompt_seen = True
            return
        self._tokens.extend(value.reshape(-1).tolist())
        stable = len(self._tokens)
        while stable and BYTE_TOKEN.fullmatch(self.tokenizer.convert_ids_to_tokens(self._tokens[stable - 1]) or ""):
            stable -= 1
        self._send(self._decode(stable).rstrip("\ufffd"))

    def end(self) -> None:
        self._send(self._decode())

    def close(self) -> None:
        """Mark the end of the stream (also after a failure, so the reader never waits forever)."""
        call_in_loop(self.loop, self.texts.put_nowait, None)

    def _decode(self, count: int | None = None) -> str:
        return self.tokenizer.decode(self._tokens[:count], skip_special_tokens=True)

    def _send(self, text: str) -> None:
        if len(text) > self._sent:
            call_in_loop(self.loop, self.texts.put_nowait, text[self._sent :])
            self._sent = len(text)


class StreamClosed(Exception):
    """A streamed request whose client left before the model got to it."""


class StopWhenCancelled(StoppingCriteria):
    """Ends a streamed generation early once its client has gone (``streamer.cancelled``)."""

    def __init__(self, streamer: AsyncTextStreamer) -> None:
        self.streamer = streamer

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.streamer.cancelled, dtype=torch.bool, device=input_ids.device)


@dataclass
class Job:
    """One request's work: score only (``sampling is None``) or generate."""

    pixels: torch.Tensor  # (3, H, W)
    prompt: str
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    sampling: Sampling | None = None
    streamer: AsyncTextStreamer | None = None
    enqueued: float = field(default_factory=time.perf_counter)

    def group_key(self) -> tuple:
        if self.sampling is None:
            return ("score",)
        if self.streamer is not None:
            return ("stream", id(self))
        return ("generate", self.sampling)

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():  # the client went away and the handler was cancelled
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        if self.streamer is not None:  # the end of the text first: the reader then awaits the future
            self.streamer.close()
        call_in_loop(self.loop, settle)


class Batcher:
    """Owns the runner; the only place the model is called from."""

    def __init__(self, runner: ModelRunner, max_batch: int, max_wait_s: float, metrics: ServerMetrics) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        self.runner = runner
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.metrics = metrics
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="safevlm-model", daemon=True)

    # ------------------------------------------------------------------ request side (asyncio)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def score(self, pixels: torch.Tensor, prompt: str) -> asyncio.Future:
        """Queue one image and prompt (``""``: no text); the future gives the policy's `SafetyDecision`."""
        return self._submit(pixels, prompt)

    def generate(
        self, pixels: torch.Tensor, prompt: str, sampling: Sampling, streamer: AsyncTextStreamer | None = None
    ) -> asyncio.Future:
        """Queue one chat request; the future gives its `GatedAnswer`. With ``streamer``, the text
        arrives on ``streamer.texts`` while it is generated."""
        return self._submit(pixels, prompt, sampling, streamer)

    def _submit(
        self,
        pixels: torch.Tensor,
        prompt: str,
        sampling: Sampling | None = None,
        streamer: AsyncTextStreamer | None = None,
    ) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        job = Job(pixels, prompt, loop.create_future(), loop, sampling, streamer)
        self._queue.put(job)
        self.metrics.queue_depth.set(self._queue.qsize())
        return job.future

    # ------------------------------------------------------------------ model side (one thread)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            deadline = time.perf_counter() + self.max_wait_s
            while len(jobs) < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(job)
            self.metrics.queue_depth.set(self._queue.qsize())
            started = time.perf_counter()
            for job in jobs:
                self.metrics.queue_wait.observe(started - job.enqueued)
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.group_key(), []).append(job)
            for group in groups.values():
                self._run_group(group)

    def _run_group(self, jobs: list[Job]) -> None:
        kind = "score" if jobs[0].sampling is None else "generate"
        try:
            results = self._call(jobs)
        except Exception as exc:
            if len(jobs) == 1:
                if not isinstance(exc, StreamClosed):
                    logger.exception("%s failed", kind)
                jobs[0].resolve(error=exc)
                return
            logger.warning("%s batch of %d failed (%s); retrying one by one", kind, len(jobs), exc)
            for job in jobs:
                self._run_group([job])
            return
        self.metrics.batch_size.labels(kind).observe(len(jobs))
        for job, result in zip(jobs, results):
            job.resolve(result)

    def _call(self, jobs: list[Job]) -> list[Any]:
        pixels = torch.stack([job.pixels for job in jobs])
        prompts = [job.prompt for job in jobs]
        first = jobs[0]
        if first.sampling is None:
            return self.runner.score_and_decide(pixels, prompts)
        if first.streamer is None:
            return self.runner.generate(pixels, prompts, first.sampling)
        if first.streamer.cancelled:  # the client left while the request waited
            raise StreamClosed("the client closed the stream before it started")
        return self.runner.generate(
            pixels,
            prompts,
            first.sampling,
            streamer=first.streamer,
            stopping_criteria=StoppingCriteriaList([StopWhenCancelled(first.streamer)]),
        )
