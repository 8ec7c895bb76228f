"""Guard-proxy mode against a real upstream (the session's `safevlm serve`): allowed requests are forwarded
with the gate's hint, refused ones never reach it; remote image URLs when enabled."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import require_serve_packages

require_serve_packages()
import httpx

from .assets import free_port, start_server, stop_server
from .conftest import API_KEY
from .test_server import AUTH, MAX_TOKENS, client, data_url, metric

# Answers and scores are compared with the same model in this process.
pytestmark = [pytest.mark.timeout(300), pytest.mark.device_sensitive]


@pytest.fixture(scope="module")
def proxy(server, assets, tmp_path_factory):
    """A proxy-mode server in front of ``server``, plus a plain HTTP server holding a photo (remote images)."""
    folder = tmp_path_factory.mktemp("serve-proxy")
    (folder / "key.txt").write_text(API_KEY)
    files = folder / "files"
    files.mkdir()
    assets.photos[0].save(files / "photo.png")
    port = free_port()
    files_server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=files,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proc, url = start_server(
        [
            *assets.serve_args(),
            "--upstream",
            server + "/v1",
            "--upstream-api-key-file",
            str(folder / "key.txt"),
            "--allow-remote-images",
            "--remote-timeout-s",
            "5",
        ],
        folder / "proxy.log",
    )
    yield url, f"http://127.0.0.1:{port}"
    stop_server(proc)
    stop_server(files_server)


def upstream_chats(server: str) -> float:
    return metric(server, "safevlm_requests_total", endpoint="chat_completions")


def image_only_decision(direct, image):
    model, policy = direct
    scores = model.assess([image])
    return policy.decide_batch(scores.level_probs, scores.type_probs)[0]


def test_allowed_requests_are_forwarded_with_the_hint_and_refused_never_reach_upstream(proxy, server, assets, direct):
    url, _ = proxy
    prompt = "What is shown in this image?"
    forwarded, actions = 0, []
    for image in assets.photos + assets.refused:
        decision = image_only_decision(direct, image)
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": prompt},
                    {"type": "image_url", "image_url": {"url": data_url(image)}},
                ],
            }
        ]
        before = upstream_chats(server)
        reply = client(url).chat.completions.create(
            model="tiny", messages=messages, max_tokens=MAX_TOKENS, temperature=0
        )
        sent = upstream_chats(server) - before
        assert reply.model_extra["safety"]["action"] == decision.action
        actions.append(decision.action)
        if decision.action == "refuse":
            assert sent == 0, "a refused request reached the upstream"
            assert reply.choices[0].finish_reason == "content_filter"
            assert reply.choices[0].message.content == decision.refusal
            continue
        forwarded += 1
        assert sent == 1
        # What the upstream answers when asked directly, the hint after the question as the gate places it.
        expected = [
            {
                "role": "user",
                "content": messages[0]["content"]
                + (
                    [{"type": "text", "text": direct[1].hint_prefix + decision.hint}]
                    if decision.action == "hint"
                    else []
                ),
            }
        ]
        own = httpx.post(
            server + "/v1/chat/completions",
            headers=AUTH,
            timeout=120,
            json={"model": "tiny", "messages": expected, "max_tokens": MAX_TOKENS, "temperature": 0},
        )
        assert reply.choices[0].message.content == own.json()["choices"][0]["message"]["content"]
        pieces, last = [], None
        for chunk in client(url).chat.completions.create(
            model="tiny", messages=messages, max_tokens=MAX_TOKENS, temperature=0, stream=True
        ):
            pieces.append(chunk.choices[0].delta.content or "")
            last = chunk
        assert "".join(pieces) == reply.choices[0].message.content
        assert last.model_extra["safety"]["action"] == decision.action
    assert {"allow", "hint", "refuse"} <= set(actions)
    assert metric(url, "safevlm_upstream_requests_total", outcome="200") == 2 * forwarded


def test_refused_stream_is_answered_locally(proxy, server, assets):
    url, _ = proxy
    before = upstream_chats(server)
    chunks = list(
        client(url).chat.completions.create(
            model="tiny",
            stream=True,
            max_tokens=MAX_TOKENS,
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(assets.refused[0])}}]}
            ],
        )
    )
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("I'm sorry")
    assert upstream_chats(server) == before


def test_remote_images_when_enabled_and_text_only_moderation_is_refused(proxy, assets, direct):
    url, files = proxy
    api = client(url)
    remote = api.moderations.create(
        model="tiny", input=[{"type": "image_url", "image_url": {"url": files + "/photo.png"}}]
    )
    inline = api.moderations.create(
        model="tiny", input=[{"type": "image_url", "image_url": {"url": data_url(assets.photos[0])}}]
    )
    assert remote.results[0].model_extra["safety"] == {
        **inline.results[0].model_extra["safety"],
        "timings": remote.results[0].model_extra["safety"]["timings"],
    }
    assert remote.results[0].category_applied_input_types.model_extra["privacy"] == ["image"]
    missing = httpx.post(
        url + "/v1/moderations", json={"input": [{"type": "image_url", "image_url": {"url": files + "/nope.png"}}]}
    )
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "image_fetch_failed"
    text_only = httpx.post(url + "/v1/moderations", json={"input": "hello"})
    assert text_only.status_code == 400 and text_only.json()["error"]["code"] == "text_not_scored"
    assert httpx.get(url + "/health").json()["mode"] == "proxy"
