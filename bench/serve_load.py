"""Serving load: throughput of `safevlm serve` with dynamic batching vs one request at a time.

Builds the tiny LLaVA (``safety_modules.testing.tiny``) and fresh safety modules in a temporary folder and
starts two real server subprocesses on 127.0.0.1:

  (a) ``--max-batch 1``: the model loop takes one request at a time (no batching);
  (b) ``--max-batch <concurrency> --max-wait-ms <wait>``: dynamic batching.

The load: ``--concurrency`` clients (asyncio + httpx), each sending its share of ``--requests``
greedy chat completions back to back (``max_tokens`` = ``--new-tokens``), each with one of 8
different images (real photos from scikit-image when installed, else noise; JPEG data URLs) and a
question. The two servers get the load in alternating rounds (the order rotates), so both see the
same machine load; throughput is the median over rounds. Every answer must be equal between (a)
and (b). Both servers run with ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it (see
docs/serving.md, Deployment: spinning OpenMP threads starve the model loop on a shared CPU).
Then head-of-line blocking, on (b): one large chat request (a prompt of ``--hol-prompt-words`` words,
``--hol-new-tokens`` new tokens) runs while small requests are sent one after another: moderations
(an image and a question; they take the scoring lane, see docs/serving.md) and, printed apart, small
chats (8 new tokens; they share the generation lane). Only the small requests that finished while the
large one still ran count.
Prints both modes and, last, ``serve_load speedup=<b/a> p50_ms=<n> p99_ms=<n> hol_p99_ms=<n>
concurrency=<n>`` (latencies of b; ``hol_p99_ms``: p99 of the moderations behind the large request).

    # defaults: --concurrency 16 --requests 64 --rounds 3 --new-tokens 64 --wait-ms 10
    PYTHONPATH=. python bench/serve_load.py
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.serve.assets import start_server, stop_server  # the servers the serve tests start

PROMPTS = ("What is shown in this image?", "Describe the picture in detail.", "Can you read the text?")


def images() -> list[Image.Image]:
    try:
        from skimage import data

        photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.camera()]
        out = [Image.fromarray(p).convert("RGB") for p in photos]
    except ImportError:
        out = []
    rng = np.random.default_rng(0)
    while len(out) < 8:
        out.append(Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)))
    return out


def data_url(image: Image.Image) -> str:
    """A JPEG data URL, as clients usually send photos."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


async def load(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[float], list[str]]:
    """Send every body with ``concurrency`` clients; return (wall seconds, latencies, answers in order)."""
    answers: list[str] = [""] * len(bodies)
    latencies: list[float] = []
    next_index = iter(range(len(bodies)))

    async def client(http: httpx.AsyncClient) -> None:
        for i in next_index:
            started = time.perf_counter()
            response = await http.post("/v1/chat/completions", json=bodies[i])
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)
            answers[i] = response.json()["choices"][0]["message"]["content"]

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        await http.post("/v1/chat/completions", json=bodies[0])  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, answers


async def head_of_line(url: str, big: dict, small: tuple[str, dict], count: int) -> tuple[list[float], float]:
    """Latencies of small requests sent one by one while ``big`` runs (only those that ended before it did),
    and the big request's own latency."""
    path, body = small
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        await http.post(path, json=body)  # warm-up
        started = time.perf_counter()
        task = asyncio.create_task(http.post("/v1/chat/completions", json=big))
        await asyncio.sleep(0.3)  # the large request has reached the model
        while not task.done() and len(latencies) < count:
            sent = time.perf_counter()
            (await http.post(path, json=body)).raise_for_status()
            if not task.done():
                latencies.append(time.perf_counter() - sent)
        (await task).raise_for_status()
        return latencies, time.perf_counter() - started


def run_rounds(urls: dict[str, str], bodies: list[dict], concurrency: int, rounds: int):
    """Alternate the two servers round by round (the order rotates), so both see the same machine load."""
    walls: dict[str, list[float]] = {name: [] for name in urls}
    latencies: dict[str, list[float]] = {name: [] for name in urls}
    answers: dict[str, list[str]] = {}
    names = list(urls)
    for r in range(rounds):
        for name in names[r % 2 :] + names[: r % 2]:
            wall, lat, got = asyncio.run(load(urls[name], bodies, concurrency))
            walls[name].append(wall)
            latencies[name] += lat
            answers[name] = got
    return walls, latencies, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode, alternating")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--wait-ms", type=float, default=10.0)
    parser.add_argument(
        "--hol-prompt-words", type=int, default=600, help="prompt of the large request (one token a word)"
    )
    parser.add_argument("--hol-new-tokens", type=int, default=768, help="new tokens of the large request")
    parser.add_argument("--hol-requests", type=int, default=40, help="small requests behind it, at most")
    args = parser.parse_args()

    import torch

    from safety_modules import SafeLlava
    from safety_modules.testing.tiny import make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = make_tiny(folder / "tiny")
        safety = SafeLlava.from_pretrained(base, seed=0, device="cpu", dtype=torch.float32).safety.save_pretrained(
            folder / "safety"
        )
        urls = [data_url(image) for image in images()]
        bodies = [
            {
                "model": "tiny",
                "max_tokens": args.new_tokens,
                "temperature": 0,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": PROMPTS[i % len(PROMPTS)]},
                            {"type": "image_url", "image_url": {"url": urls[i % len(urls)]}},
                        ],
                    }
                ],
            }
            for i in range(args.requests)
        ]
        print(
            f"serve_load: {args.requests} requests x {args.rounds} rounds, {args.concurrency} clients, "
            f"{args.new_tokens} new tokens, {os.cpu_count()} CPUs, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')!r}"
        )
        modes = {
            "one-by-one": ["--max-batch", "1", "--max-wait-ms", "0"],
            "batched": ["--max-batch", str(args.concurrency), "--max-wait-ms", str(args.wait_ms)],
        }
        common = ["--base", str(base), "--safety", str(safety), "--served-model-name", "tiny"]
        servers = {
            name: start_server([*common, *server_args], folder / f"{name}.log", timeout_s=120)
            for name, server_args in modes.items()
        }
        try:
            walls, latencies, answers = run_rounds(
                {n: url for n, (_, url) in servers.items()}, bodies, args.concurrency, args.rounds
            )
            per_call = {name: batch_rows(url) for name, (_, url) in servers.items()}
            rate = report(modes, bodies, walls, latencies, per_call, answers, args.rounds)
            hol, hol_chat, big_s = head_of_line_runs(servers["batched"][1], bodies, urls[0], args)
        finally:
            for proc, _ in servers.values():
                stop_server(proc)
        if not hol:
            raise SystemExit(f"the large request ended ({big_s:.1f} s) before any small one: raise --hol-new-tokens")
        hol_p50, hol_p99 = np.percentile(hol, [50, 99]) * 1000
        print(
            f"head-of-line: large request {big_s * 1000:.0f} ms; {len(hol)} moderations behind it: "
            f"p50 {hol_p50:.0f} ms p99 {hol_p99:.0f} ms"
        )
        if hol_chat:
            chat_p50, chat_p99 = np.percentile(hol_chat, [50, 99]) * 1000
            print(f"head-of-line: {len(hol_chat)} small chats behind it: p50 {chat_p50:.0f} ms p99 {chat_p99:.0f} ms")
        else:
            print("head-of-line: no small chat finished while the large request ran (they wait for it)")
        p50, p99 = np.percentile(latencies["batched"], [50, 99]) * 1000
        print(
            f"serve_load speedup={rate['batched'] / rate['one-by-one']:.2f} p50_ms={p50:.0f} p99_ms={p99:.0f} "
            f"hol_p99_ms={hol_p99:.0f} concurrency={args.concurrency}"
        )


def report(modes, bodies, walls, latencies, per_call, answers, rounds) -> dict[str, float]:
    """Print each mode's throughput and latencies (and stop if the answers differ); return the rates."""
    rate = {}
    for name in modes:
        rate[name] = len(bodies) / statistics.median(walls[name])
        p50, p99 = np.percentile(latencies[name], [50, 99]) * 1000
        print(
            f"{name:>10}: {rate[name]:7.2f} req/s (median of {rounds} rounds)  p50 {p50:7.0f} ms  "
            f"p99 {p99:7.0f} ms  {per_call[name]:.1f} requests per generate call",
            flush=True,
        )
    if answers["batched"] != answers["one-by-one"]:
        differ = sum(a != b for a, b in zip(answers["batched"], answers["one-by-one"]))
        raise SystemExit(f"{differ} answers differ between batched and one-by-one serving")
    return rate


def head_of_line_runs(url: str, bodies: list[dict], image_url: str, args) -> tuple[list[float], list[float], float]:
    """(moderation latencies, small-chat latencies, the large request's seconds) behind one large request."""
    big = {
        **bodies[0],
        "max_tokens": args.hol_new_tokens,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": " ".join(["the"] * args.hol_prompt_words)},
                    {"type": "image_url", "image_url": {"url": image_url}},
                ],
            }
        ],
    }
    moderation = ("/v1/moderations", {"model": "tiny", "input": bodies[1]["messages"][0]["content"]})
    small_chat = ("/v1/chat/completions", {**bodies[1], "max_tokens": 8})
    hol, big_s = asyncio.run(head_of_line(url, big, moderation, args.hol_requests))
    hol_chat, _ = asyncio.run(head_of_line(url, big, small_chat, args.hol_requests))
    return hol, hol_chat, big_s


def batch_rows(url: str) -> float:
    """Mean requests per generate call, from the server's own metrics."""
    values = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("safevlm_batch_size_") and 'kind="generate"' in line:
            values[line.split("{")[0]] = float(line.split()[-1])
    return values.get("safevlm_batch_size_sum", 0.0) / max(values.get("safevlm_batch_size_count", 0.0), 1.0)


if __name__ == "__main__":
    main()
