"""Proxy mode in front of a broken upstream (a real HTTP server on 127.0.0.1 that misbehaves on purpose):
every failure is a 502/504 with an OpenAI error body, or an error event mid-stream, within the deadline."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import require_serve_packages

require_serve_packages()
import httpx

from .assets import start_server, stop_server
from .test_server import data_url

pytestmark = [pytest.mark.timeout(300)]
UPSTREAM_TIMEOUT_S = 2


class Broken(BaseHTTPRequestHandler):
    """Answers by the last user text: nonjson, list, badsse, nodone, deep, deepsse, huge, hang, trickle."""

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        content = body["messages"][-1]["content"]
        what = content if isinstance(content, str) else next(p["text"] for p in content if p["type"] == "text")
        what = what.split()[0]
        if what == "hang":
            time.sleep(30)
            return
        self.send_response(200)
        if what == "trickle":  # a byte now and then: no read ever times out
            self.send_header("content-length", "100000")
            self.end_headers()
            for _ in range(60):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.5)
            return
        if what == "huge":  # a 40 MB answer: never read whole into the proxy's memory
            self.send_header("content-length", str(40 << 20))
            self.end_headers()
            chunk = b" " * (1 << 20)
            try:
                for _ in range(40):
                    self.wfile.write(chunk)
            except OSError:  # the proxy stopped reading
                pass
            return
        deep = b"[" * 100_000 + b"]" * 100_000  # json.loads: RecursionError, which is no JSONDecodeError
        payload = {
            "deep": deep,
            "deepsse": b"data: " + deep + b"\n\n",
            "nonjson": b"<html>bad gateway</html>",
            "list": b"[1, 2, 3]",
            "badsse": b'data: {"choices": [{"delta": {"content": "a"}}]}\n\ndata: {not json\n\n',
            "nodone": b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n',
        }[what]
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def proxy(assets, tmp_path_factory):
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    folder = tmp_path_factory.mktemp("serve-proxy-errors")
    proc, url = start_server(
        [
            *assets.serve_args(),
            *["--upstream", f"http://127.0.0.1:{upstream.server_address[1]}/v1"],
            *["--upstream-timeout-s", str(UPSTREAM_TIMEOUT_S)],
        ],
        folder / "proxy.log",
    )
    yield url, folder / "proxy.log"
    stop_server(proc)
    upstream.shutdown()


def ask(assets, what: str, stream: bool = False) -> dict:
    content = [
        {"type": "text", "text": what},
        {"type": "image_url", "image_url": {"url": data_url(assets.photos[0])}},  # allowed: forwarded
    ]
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 4, "stream": stream}


@pytest.mark.parametrize(
    "what, status", [("nonjson", 502), ("list", 502), ("deep", 502), ("huge", 502), ("hang", 504), ("trickle", 504)]
)
def test_a_bad_upstream_answer_is_a_502_or_504_with_an_openai_error(proxy, assets, what, status):
    url, _ = proxy
    started = time.perf_counter()
    response = httpx.post(url + "/v1/chat/completions", json=ask(assets, what), timeout=60)
    elapsed = time.perf_counter() - started
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "upstream_error" and error["message"]
    assert elapsed < UPSTREAM_TIMEOUT_S + 8  # the overall deadline, not a per-read timeout


@pytest.mark.parametrize("what", ["badsse", "nodone", "deepsse", "trickle"])
def test_a_broken_upstream_stream_ends_with_an_error_event(proxy, assets, what):
    url, log = proxy
    with httpx.stream("POST", url + "/v1/chat/completions", json=ask(assets, what, stream=True), timeout=60) as r:
        assert r.status_code == 200
        events = [
            json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:") and line != "data: [DONE]"
        ]
    assert "error" in events[-1] and events[-1]["error"]["type"] == "upstream_error", events
    assert "Traceback" not in log.read_text()
