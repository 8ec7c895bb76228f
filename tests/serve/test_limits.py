"""The limits of a public endpoint, against a real server subprocess with small limits: prompt tokens, queue
bound, deadline, header and body timeouts, quiet disconnects, JSON nesting, the ready line and access log."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest

from .conftest import require_serve_packages

require_serve_packages()
import httpx
import openai

from .assets import start_server, stop_server
from .test_server import data_url, user

pytestmark = [pytest.mark.timeout(300)]
PROMPT_LIMIT = 700  # 576 image + 64 safety tokens + a short question fit; a long one does not


@pytest.fixture(scope="module")
def limited(assets, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-limits")
    log = folder / "server.log"
    proc, url = start_server(
        [
            *assets.serve_args(),
            *["--max-prompt-tokens", str(PROMPT_LIMIT), "--max-batch", "1", "--max-queue", "2"],
            *["--request-timeout-s", "2", "--header-timeout-s", "1", "--body-timeout-s", "1", "--max-body-mb", "10"],
        ],
        log,
    )
    yield url, log
    stop_server(proc)


def api(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)


def test_prompts_over_the_token_limit_are_refused_fast_naming_count_and_limit(limited):
    url, _ = limited
    with pytest.raises(openai.BadRequestError) as err:
        api(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x " * 50_000}])
    assert err.value.code == "context_length_exceeded"
    assert f"limit is {PROMPT_LIMIT:,} tokens" in err.value.message
    started = time.perf_counter()
    with pytest.raises(openai.BadRequestError) as err:  # 7 MB of text: refused without the model
        api(url).moderations.create(model="tiny", input="word " * 1_400_000)
    assert time.perf_counter() - started < 10
    assert err.value.code == "context_length_exceeded" and str(PROMPT_LIMIT) in err.value.message.replace(",", "")
    # A prompt just under the limit is answered, with its count in usage.
    reply = api(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0
    )
    assert reply.usage.prompt_tokens <= PROMPT_LIMIT


def test_a_full_queue_is_429_with_retry_after_and_a_deadline_is_504(limited, assets):
    url, _ = limited
    long_body = {
        "model": "tiny",
        "messages": user("Describe the picture in detail.", assets.photos[1]),
        "max_tokens": 2000,
        "temperature": 0,
        "stream": True,
    }
    short = {"model": "tiny", "messages": user("Hi", url=data_url(assets.photos[0])), "max_tokens": 2}

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            async with http.stream("POST", "/v1/chat/completions", json=long_body) as stream:
                lines = stream.aiter_lines()
                assert (await anext(lines)).startswith("data:")  # the long generation holds the model
                others = await asyncio.gather(*(http.post("/v1/chat/completions", json=short) for _ in range(6)))
                events = [line async for line in lines if line.startswith("data:")]
            return others, events

    started = time.perf_counter()
    others, events = asyncio.run(go())
    elapsed = time.perf_counter() - started
    statuses = sorted(r.status_code for r in others)
    assert statuses.count(429) >= 4, statuses  # 2 wait in the queue, the rest are turned away
    for response in others:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["code"] == "queue_full"
    # The stream ran into the 2 s deadline: it ends with an error event, long before 2000 tokens.
    assert '"request_timeout"' in events[-1], events[-3:]
    assert elapsed < 15
    with httpx.Client(base_url=url, timeout=60) as http:
        blocking = http.post("/v1/chat/completions", json={**long_body, "stream": False})
        assert blocking.status_code == 504 and blocking.json()["error"]["code"] == "request_timeout"
        assert http.post("/v1/chat/completions", json=short).status_code == 200
        metrics = http.get("/metrics").text
    assert re.search(r'safevlm_requests_rejected_total\{reason="queue_full"\} [1-9]', metrics)
    assert re.search(r'safevlm_requests_rejected_total\{reason="deadline"\} [1-9]', metrics)


def raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def test_slow_headers_are_cut_off_and_a_slow_body_gets_408(limited):
    url, _ = limited
    with raw(url) as sock:
        sock.sendall(b"POST /v1/moderations HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        started = time.perf_counter()
        assert sock.recv(1024) == b""  # closed by the server
        assert time.perf_counter() - started < 5
    with raw(url) as sock:
        sock.sendall(b"POST /v1/moderations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b'Content-Length: 1000\r\n\r\n{"input": ')
        answer = b""
        while b"body_timeout" not in answer and (more := sock.recv(4096)):
            answer += more
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"body_timeout" in answer


def test_a_client_leaving_mid_body_is_one_quiet_log_line(limited):
    url, log = limited
    for _ in range(3):
        with raw(url) as sock:
            sock.sendall(b'POST /v1/moderations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"in')
    time.sleep(1.0)
    text = log.read_text()
    assert text.count("client disconnected during the request body") == 3
    assert "Traceback" not in text and "unhandled error" not in text


def test_deep_json_is_a_400(limited):
    url, _ = limited
    response = httpx.post(
        url + "/v1/chat/completions", content=b"[" * 100_000, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "json_too_deep"


def test_ready_line_and_an_access_log_line_per_request(limited, assets):
    url, log = limited
    httpx.post(
        url + "/v1/moderations",
        json={"model": "tiny", "input": [{"type": "image_url", "image_url": {"url": data_url(assets.photos[0])}}]},
    ).raise_for_status()
    assert httpx.post(url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": []}).status_code == 400
    time.sleep(0.5)
    text = log.read_text()
    assert f"safevlm serve ready on {url} (model tiny, tiny-alias; local mode" in text
    assert re.search(r"POST /v1/moderations 200 \d+ms decision=(allow|hint)", text), text[-2000:]
    assert re.search(r"POST /v1/chat/completions 400 \d+ms decision=-", text)
