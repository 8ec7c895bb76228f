"""The batching loop in process, on the real tiny model: one call per group, a failing row fails alone."""

from __future__ import annotations

import asyncio

import pytest
import torch

from safety_modules.gate import Gate

from .conftest import require_serve_packages

require_serve_packages()
from safety_modules.serve.batching import AsyncTextStreamer, Batcher
from safety_modules.serve.metrics import ServerMetrics
from safety_modules.serve.model_runner import LlavaRunner, Sampling

# Answers and scores are compared with the same model in this process.
pytestmark = [pytest.mark.timeout(300), pytest.mark.device_sensitive]
GREEDY = Sampling(max_tokens=6, temperature=0.0)


@pytest.fixture(scope="module")
def runner(direct):
    model, policy = direct
    return LlavaRunner(model, policy)


def run_batch(runner, jobs, max_batch=8):
    """Queue every job at once (so they share a batch) and gather the results or exceptions."""
    metrics = ServerMetrics()
    batcher = Batcher(runner, max_batch=max_batch, max_wait_s=0.5, metrics=metrics)
    batcher.start()

    async def go():
        futures = [batcher.generate(p, t, s) if s else batcher.score(p, t) for p, t, s in jobs]
        return await asyncio.gather(*futures, return_exceptions=True)

    try:
        return asyncio.run(go()), metrics
    finally:
        batcher.stop()


def sample(metrics: ServerMetrics, kind: str) -> tuple[float, float]:
    """(calls, rows) of the batch-size histogram for ``kind``."""
    values = {s.name: s.value for m in metrics.registry.collect() for s in m.samples if s.labels.get("kind") == kind}
    return values["safevlm_batch_size_count"], values["safevlm_batch_size_sum"]


def test_groups_share_one_call_and_a_failing_row_fails_alone(runner, assets, direct):
    model, policy = direct
    pixels = [runner.preprocess(image) for image in assets.photos + assets.refused]
    prompt = "What is shown in this image?"
    jobs = [
        (pixels[0], prompt, GREEDY),
        (pixels[3], prompt, GREEDY),
        (pixels[1], prompt, GREEDY),
        (pixels[2], "<image> breaks the gate", GREEDY),  # the gate raises for this row only
        (pixels[1], prompt, Sampling(max_tokens=3, temperature=0.0)),  # other settings: its own call
        (pixels[0], "", None),
        (pixels[3], prompt, None),
    ]  # scoring only
    results, metrics = run_batch(runner, jobs)
    assert isinstance(results[3], ValueError) and "image placeholder" in str(results[3])
    for (px, text, sampling), result in zip(jobs, results):
        if sampling is None:
            scores = model.assess(pixel_values=px[None], prompts=[text])
            assert result.action == policy.decide_batch(scores.level_probs, scores.type_probs)[0].action
        elif not text.startswith("<image>"):
            want = Gate(model, policy).generate(px[None], [text], do_sample=False, max_new_tokens=sampling.max_tokens)[
                0
            ]
            assert (result.text, result.decision.action) == (want.text, want.decision.action)
    assert results[1].decision.action == "refuse" and results[1].token_ids is None
    # The greedy batch of 4 failed and was retried row by row (3 calls of 1 that succeed), the other
    # settings ran alone (1 call of 1), the two scoring jobs shared one call.
    assert sample(metrics, "generate") == (4.0, 4.0) and sample(metrics, "score") == (1.0, 2.0)
    assert torch.equal(
        pixels[0], runner.preprocess(assets.photos[0])
    )  # the batches left the callers' pixels as they were


def test_a_cancelled_stream_stops_generating(runner, assets, direct):
    model, policy = direct
    pixels = runner.preprocess(assets.photos[1])
    prompt, sampling = "Describe the picture in detail.", Sampling(max_tokens=120, temperature=0.0)
    full = Gate(model, policy).generate(pixels[None], [prompt], do_sample=False, max_new_tokens=120)[0]
    batcher = Batcher(runner, max_batch=4, max_wait_s=0.0, metrics=ServerMetrics())
    batcher.start()

    async def go():
        streamer = AsyncTextStreamer(runner.tokenizer, asyncio.get_running_loop())
        future = batcher.generate(pixels, prompt, sampling, streamer)
        first = await streamer.texts.get()
        streamer.cancelled = True  # what the app does when the client goes away
        return first, await future

    try:
        first, answer = asyncio.run(go())
    finally:
        batcher.stop()
    assert first and full.text.startswith(first.strip())
    assert len(full.token_ids) > 20 and len(answer.token_ids) < len(full.token_ids) // 2
    assert full.token_ids[: len(answer.token_ids)] == answer.token_ids


def test_a_moderation_runs_between_the_steps_of_a_long_generation(runner, assets, direct):
    """The scoring lane: a score queued while a long generation runs is answered before that generation ends."""
    model, policy = direct
    pixels = runner.preprocess(assets.photos[1])
    batcher = Batcher(runner, max_batch=4, max_wait_s=0.0, metrics=ServerMetrics())
    batcher.start()

    async def go():
        streamer = AsyncTextStreamer(runner.tokenizer, asyncio.get_running_loop())
        generation = batcher.generate(pixels, "Describe the picture in detail.", Sampling(120, 0.0), streamer)
        await streamer.texts.get()  # the generation is running
        decision = await batcher.score(pixels, "What is shown in this image?")
        return decision, generation.done(), await generation

    try:
        decision, generation_done, answer = asyncio.run(go())
    finally:
        batcher.stop()
    assert not generation_done, "the score waited for the whole generation"
    assert len(answer.token_ids) > 20
    scores = model.assess(pixel_values=pixels[None], prompts=["What is shown in this image?"])
    assert decision.action == policy.decide_batch(scores.level_probs, scores.type_probs)[0].action


def test_the_queue_is_bounded_and_abandoned_jobs_never_run(runner, assets):
    from safety_modules.serve.batching import QueueFull

    pixels = runner.preprocess(assets.photos[0])
    metrics = ServerMetrics()
    batcher = Batcher(runner, max_batch=4, max_wait_s=0.0, metrics=metrics, max_queue=2)

    async def go():
        gone = batcher.score(pixels, "a")
        kept = batcher.score(pixels, "b")
        with pytest.raises(QueueFull) as full:
            batcher.score(pixels, "c")
        assert full.value.retry_after_s >= 1 and full.value.depth == 2
        gone.cancel()  # its caller left (deadline, disconnect) before the loop ran
        batcher.start()
        return await kept

    try:
        asyncio.run(go())
    finally:
        batcher.stop()
    assert sample(metrics, "score") == (1.0, 1.0), "the abandoned job ran"
