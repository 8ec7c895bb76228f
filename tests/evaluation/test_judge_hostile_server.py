"""The chat judge against a misbehaving OpenAI-compatible server on 127.0.0.1: a bad status line, a truncated body,
a reset connection, 5xx/429 then 200 are retried; a server that trickles bytes or hangs is cut off within a bounded
time; an item whose judge fails gets no score and its error, and the run goes on."""

from __future__ import annotations

import json
import re
import socket
import socketserver
import struct
import threading
import time
from collections import Counter

import pytest
from PIL import Image

from safety_modules.evaluation import judge as jd

pytestmark = pytest.mark.timeout(120)


class MisbehavingServer:
    """Answers ``POST /v1/chat/completions`` as the item's question says: ``MODES=a,b,c`` makes the n-th request
    for that item behave as the n-th mode (the last one repeats). ``seen`` counts the requests per item."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.stop = threading.Event()
        lock = threading.Lock()
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.rfile.readline()  # request line
                headers = {}
                while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = json.loads(self.rfile.read(int(headers["content-length"])))
                modes = re.search(r"MODES=([\w,]+)", body["messages"][0]["content"][0]["text"]).group(1)
                with lock:
                    n = server.seen[modes]
                    server.seen[modes] += 1
                mode = modes.split(",")[min(n, len(modes.split(",")) - 1)]
                getattr(server, mode)(self.connection)

        socketserver.ThreadingTCPServer.daemon_threads = True
        self.httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def _payload(text: str = "7") -> bytes:
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": "m"}
        reply["choices"] = [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
        return json.dumps(reply).encode()

    @staticmethod
    def _head(status: str, length: int) -> bytes:
        return (
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()

    def ok(self, conn: socket.socket) -> None:
        payload = self._payload()
        conn.sendall(self._head("200 OK", len(payload)) + payload)

    def http500(self, conn: socket.socket) -> None:
        conn.sendall(self._head("500 Internal Server Error", 10) + b"overloaded")

    def http429(self, conn: socket.socket) -> None:
        conn.sendall(self._head("429 Too Many Requests", 4) + b"slow")

    def bad_status(self, conn: socket.socket) -> None:
        conn.sendall(b"ICY 200 OK\r\n\r\n")  # what http.client calls a BadStatusLine

    def truncated(self, conn: socket.socket) -> None:
        payload = self._payload()
        conn.sendall(self._head("200 OK", len(payload)) + payload[: len(payload) // 2])  # IncompleteRead

    def reset(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST

    def trickle(self, conn: socket.socket) -> None:
        payload = b" " * 10_000 + self._payload()  # valid JSON in the end, one byte every 0.1 s
        conn.sendall(self._head("200 OK", len(payload)))
        for byte in payload:
            if self.stop.wait(0.1):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return

    def hang(self, conn: socket.socket) -> None:
        self.stop.wait(60)

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    srv = MisbehavingServer()
    yield srv
    srv.close()


def _request(modes: str) -> jd.JudgeRequest:
    return jd.JudgeRequest(modes, "safety", f"Question MODES={modes}", "An answer.", Image.new("RGB", (8, 8)))


def test_transport_errors_and_busy_answers_are_retried(server, tmp_path):
    modes = ["bad_status,ok", "truncated,ok", "reset,ok", "http500,http429,ok"]
    judge = jd.ChatJudge(server.url, "m", tmp_path / "c.jsonl", backoff=0.01, timeout=10)
    results = judge.judge([_request(m) for m in modes])
    assert [(r.score, r.error) for r in results] == [(7.0, "")] * 4
    assert [server.seen[m] for m in modes] == [2, 2, 2, 3]


def test_an_item_whose_judge_keeps_failing_is_recorded_and_the_run_goes_on(server, tmp_path):
    judge = jd.ChatJudge(server.url, "m", tmp_path / "c.jsonl", max_retries=2, backoff=0.01, timeout=10)
    broken, fine = judge.judge([_request("bad_status"), _request("ok")])
    assert broken.score is None and "failed after 3 attempts (network:" in broken.error
    assert server.seen["bad_status"] == 3
    assert fine.score == 7.0 and not fine.error


def test_a_trickling_or_hanging_server_is_cut_off_per_request(server, tmp_path):
    judge = jd.ChatJudge(server.url, "m", tmp_path / "c.jsonl", max_retries=1, backoff=0.01, timeout=1.0)
    start = time.monotonic()
    trickled, hung, fine = judge.judge([_request("trickle"), _request("hang"), _request("ok")])
    elapsed = time.monotonic() - start
    for result in (trickled, hung):
        assert result.score is None and "failed after 2 attempts (no complete answer within 1 s)" in result.error
    assert fine.score == 7.0
    assert server.seen["trickle"] == server.seen["hang"] == 2
    assert elapsed < 10, elapsed  # two attempts of 1 s each, the items in parallel


def test_the_item_deadline_bounds_all_its_retries(server, tmp_path):
    judge = jd.ChatJudge(server.url, "m", tmp_path / "c.jsonl", max_retries=50, backoff=0.01, timeout=0.5, deadline=2.0)
    start = time.monotonic()
    [result] = judge.judge([_request("trickle")])
    elapsed = time.monotonic() - start
    assert result.score is None and "within the item's 2 s deadline" in result.error
    assert 2.0 <= elapsed < 6, elapsed
    assert 2 <= server.seen["trickle"] <= 6  # it kept retrying until the deadline, not 51 times
