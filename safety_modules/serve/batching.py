"""Dynamic batching in two lanes: one thread owns the model; requests queue up and run in groups.

Request handlers (asyncio) put `Job`s in one of two lanes and await their futures:

- the scoring lane (moderations, proxy-mode chat): vision + safety head only, short;
- the generation lane (local chat): the gate and the language model.

The loop thread serves the scoring lane first, and also between the decoding steps of every
generation call (`ServeScoresBetweenSteps`), so a moderation never waits for a generation to end,
only for the current step. Each lane batches: the loop takes the first job, waits at most
``max_wait_s`` for more (up to ``max_batch``), then makes one runner call per group (scoring jobs
all together; generation jobs together when they share their `Sampling`). A streaming job runs
alone (a transformers streamer follows one sequence). The gate decides per row; refused rows never
reach the language model. If a group call fails, its jobs are retried one by one, so one bad request
cannot fail the others. Jobs whose caller went away (deadline, disconnect) are dropped before they
run, and a generation whose every caller went away stops at its next step. The lanes together hold
at most ``max_queue`` waiting jobs; beyond that `QueueFull` is raised to the caller.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
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
from ..modeling.llava.conversation import Prompt
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


class QueueFull(Exception):
    """The batcher's lanes hold ``max_queue`` jobs already; ``retry_after_s`` estimates when one frees."""

    def __init__(self, depth: int, retry_after_s: int) -> None:
        super().__init__(f"the server's queue is full ({depth} requests waiting)")
        self.depth, self.retry_after_s = depth, retry_after_s


@dataclass
class Job:
    """One request's work: score only (``sampling is None``) or generate. ``text_only``: no image was sent."""

    pixels: torch.Tensor  # (3, H, W)
    prompt: Prompt
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    sampling: Sampling | None = None
    streamer: AsyncTextStreamer | None = None
    text_only: bool = False
    enqueued: float = field(default_factory=time.perf_counter)

    def group_key(self) -> tuple:
        if self.sampling is None:
            return ("score",)
        if self.streamer is not None:
            return ("stream", id(self))
        return ("generate", self.sampling)

    @property
    def abandoned(self) -> bool:
        """The caller went away (deadline, disconnect). Read from the model thread: the future's state is a
        plain attribute, and a stale read only costs one more step."""
        return self.future.cancelled() or (self.streamer is not None and self.streamer.cancelled)

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


class StopWhenAbandoned(StoppingCriteria):
    """Ends a generation early once every caller in its batch has gone (a stream closed, a deadline passed)."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        gone = all(job.abandoned for job in self.jobs)
        return torch.full((input_ids.shape[0],), gone, dtype=torch.bool, device=input_ids.device)


class ServeScoresBetweenSteps(StoppingCriteria):
    """Not a stopping rule: transformers calls it after every decoding step, where the batcher serves the
    scoring lane. It never stops the generation."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.batcher.serve_scores()
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)


class Batcher:
    """Owns the runner; the only place the model is called from."""

    def __init__(
        self,
        runner: ModelRunner,
        max_batch: int,
        max_wait_s: float,
        metrics: ServerMetrics,
        max_queue: int = 256,
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue < 1:
            raise ConfigError(f"max_queue must be >= 1, got {max_queue}")
        self.runner = runner
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.metrics = metrics
        self._lanes: dict[str, collections.deque[Job]] = {"score": collections.deque(), "generate": collections.deque()}
        self._ready = threading.Condition()
        self._stopping = False
        self._seconds_per_job = 0.1  # a running estimate, for Retry-After
        self._thread = threading.Thread(target=self._loop, name="safevlm-model", daemon=True)

    # ------------------------------------------------------------------ request side (asyncio)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def score(self, pixels: torch.Tensor, prompt: Prompt, text_only: bool = False) -> asyncio.Future:
        """Queue one image and prompt (``""``: no text); the future gives the policy's `SafetyDecision`."""
        return self._submit("score", pixels, prompt, None, None, text_only)

    def generate(
        self,
        pixels: torch.Tensor,
        prompt: Prompt,
        sampling: Sampling,
        streamer: AsyncTextStreamer | None = None,
        text_only: bool = False,
    ) -> asyncio.Future:
        """Queue one chat request; the future gives its `GatedAnswer`. With ``streamer``, the text
        arrives on ``streamer.texts`` while it is generated."""
        return self._submit("generate", pixels, prompt, sampling, streamer, text_only)

    def _submit(
        self,
        lane: str,
        pixels: torch.Tensor,
        prompt: Prompt,
        sampling: Sampling | None,
        streamer: AsyncTextStreamer | None,
        text_only: bool,
    ) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        job = Job(pixels, prompt, loop.create_future(), loop, sampling, streamer, text_only)
        with self._ready:
            depth = self.depth
            if depth >= self.max_queue:
                wait = depth * self._seconds_per_job / self.max_batch
                raise QueueFull(depth, max(1, min(60, math.ceil(wait))))
            self._lanes[lane].append(job)
            self.metrics.queue_depth.set(depth + 1)
            self._ready.notify()
        return job.future

    # ------------------------------------------------------------------ model side (one thread)

    def _take(self, lane: str, wait: bool) -> list[Job]:
        """Up to ``max_batch`` jobs of ``lane`` whose callers are still there; with ``wait``, wait up to
        ``max_wait_s`` for the batch to fill."""
        jobs: list[Job] = []
        deadline = time.perf_counter() + (self.max_wait_s if wait else 0.0)
        with self._ready:
            while len(jobs) < self.max_batch:
                queue = self._lanes[lane]
                while queue and len(jobs) < self.max_batch:
                    job = queue.popleft()
                    if job.abandoned:
                        job.resolve(error=StreamClosed("the client left before its request ran"))
                    else:
                        jobs.append(job)
                remaining = deadline - time.perf_counter()
                if not jobs or len(jobs) >= self.max_batch or remaining <= 0 or self._stopping:
                    break
                self._ready.wait(remaining)
            self.metrics.queue_depth.set(self.depth)
        started = time.perf_counter()
        for job in jobs:
            self.metrics.queue_wait.observe(started - job.enqueued)
        return jobs

    def serve_scores(self) -> None:
        """Run the waiting scoring jobs now (called between generation steps too); no waiting for more."""
        while self._lanes["score"]:
            jobs = self._take("score", wait=False)
            if jobs:
                self._run_group(jobs)

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._stopping and not self.depth:
                    self._ready.wait()
                if self._stopping:
                    return
                lane = "score" if self._lanes["score"] else "generate"
            jobs = self._take(lane, wait=True)
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.group_key(), []).append(job)
            for group in groups.values():
                self._run_group(group)

    def _run_group(self, jobs: list[Job]) -> None:
        kind = "score" if jobs[0].sampling is None else "generate"
        started = time.perf_counter()
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
        self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * (time.perf_counter() - started)
        self.metrics.batch_size.labels(kind).observe(len(jobs))
        for job, result in zip(jobs, results):
            job.resolve(result)

    def _call(self, jobs: list[Job]) -> list[Any]:
        pixels = torch.stack([job.pixels for job in jobs])
        prompts = [job.prompt for job in jobs]
        text_only = [job.text_only for job in jobs]
        first = jobs[0]
        if first.sampling is None:
            return self.runner.score_and_decide(pixels, prompts, text_only)
        if all(job.abandoned for job in jobs):  # the callers left while the request waited
            raise StreamClosed("every caller left before the generation started")
        criteria = StoppingCriteriaList([StopWhenAbandoned(jobs), ServeScoresBetweenSteps(self)])
        return self.runner.generate(
            pixels, prompts, first.sampling, text_only, streamer=first.streamer, stopping_criteria=criteria
        )
