"""Serving load: throughput of `safevlm serve` with dynamic batching vs one request at a time.

Builds the tiny LLaVA (``safety_modules.tiny``) and fresh safety modules in a temporary folder,
then runs the same load twice against a real server subprocess on 127.0.0.1:

  (a) ``--max-batch 1``: the model loop takes one request at a time (no batching);
  (b) ``--max-batch <concurrency> --max-wait-ms <wait>``: dynamic batching.

The load: ``--concurrency`` clients (asyncio + httpx), each sending its share of ``--requests``
greedy chat completions back to back (``max_tokens`` = ``--new-tokens``), each with one of 8
different images (real photos from scikit-image when installed, else noise) and a question.
Every answer is checked to be equal between (a) and (b). Both servers run with
``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it (see docs/serving.md, deployment: spinning
OpenMP threads starve the model loop on a shared CPU). Prints both runs and, last,
``serve_load speedup=<b/a throughput> p50_ms=<n> p99_ms=<n> concurrency=<n>`` (latencies of run b).

    python bench/serve_load.py   # defaults: --concurrency 16 --requests 96 --new-tokens 16 --wait-ms 10
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
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
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def start(base: Path, safety: Path, args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "safety_modules.cli", "serve", "--base", str(base), "--safety",
                             str(safety), "--port", str(port), *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


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


def run(base: Path, safety: Path, folder: Path, name: str, server_args: list[str], bodies: list[dict],
        concurrency: int) -> tuple[float, list[float], list[str]]:
    proc, url = start(base, safety, server_args, folder / f"{name}.log")
    try:
        wall, latencies, answers = asyncio.run(load(url, bodies, concurrency))
        rows = calls = 0.0
        for line in httpx.get(url + "/metrics").text.splitlines():
            if line.startswith('safevlm_batch_size_sum{kind="generate"}'):
                rows = float(line.split()[-1])
            if line.startswith('safevlm_batch_size_count{kind="generate"}'):
                calls = float(line.split()[-1])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    print(f"{name:>10}: {len(bodies) / wall:7.2f} req/s  p50 {p50:7.0f} ms  p99 {p99:7.0f} ms  ({wall:.1f} s, "
          f"{rows / max(calls, 1):.1f} requests per generate call)")
    return wall, latencies, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--wait-ms", type=float, default=10.0)
    args = parser.parse_args()

    import torch

    from safety_modules import SafeLlava
    from safety_modules.tiny import make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = make_tiny(folder / "tiny")
        safety = SafeLlava.from_pretrained(base, seed=0, device="cpu", dtype=torch.float32).safety.save_pretrained(
            folder / "safety")
        urls = [data_url(image) for image in images()]
        bodies = [{"model": "tiny", "max_tokens": args.new_tokens, "temperature": 0,
                   "messages": [{"role": "user", "content": [
                       {"type": "text", "text": PROMPTS[i % len(PROMPTS)]},
                       {"type": "image_url", "image_url": {"url": urls[i % len(urls)]}}]}]}
                  for i in range(args.requests)]
        print(f"serve_load: {args.requests} requests, {args.concurrency} clients, {args.new_tokens} new tokens, "
              f"{os.cpu_count()} CPUs, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}")
        one_wall, _, one_answers = run(base, safety, folder, "one-by-one", ["--max-batch", "1", "--max-wait-ms", "0"],
                                       bodies, args.concurrency)
        wall, latencies, answers = run(base, safety, folder, "batched",
                                       ["--max-batch", str(args.concurrency), "--max-wait-ms", str(args.wait_ms)],
                                       bodies, args.concurrency)
        if answers != one_answers:
            differ = sum(a != b for a, b in zip(answers, one_answers))
            raise SystemExit(f"{differ} answers differ between batched and one-by-one serving")
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        print(f"serve_load speedup={one_wall / wall:.2f} p50_ms={p50:.0f} p99_ms={p99:.0f} "
              f"concurrency={args.concurrency}")


if __name__ == "__main__":
    main()
