"""`safevlm serve` end to end: a real server subprocess, the official openai client, batching, bad input, proxy."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
import zlib

import pytest

from safety_modules.gate import Gate

from .conftest import require_serve_packages

require_serve_packages()
import httpx
import openai
import torch

from .assets import png_bytes
from .conftest import API_KEY

# Answers and scores are compared with the same model in this process.
pytestmark = [pytest.mark.timeout(300), pytest.mark.device_sensitive]
MAX_TOKENS = 8
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def user(text: str, image=None, url: str | None = None) -> list[dict]:
    parts = [{"type": "text", "text": text}]
    if image is not None or url is not None:
        parts.append({"type": "image_url", "image_url": {"url": url or data_url(image)}})
    return [{"role": "user", "content": parts}]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def direct_decision(direct, image, prompt: str):
    model, policy = direct
    scores = model.assess([image], [prompt])
    return policy.decide_batch(scores.level_probs, scores.type_probs)[0]


def direct_answer(direct, image, prompt: str):
    model, policy = direct
    return Gate(model, policy).generate([image], [prompt], do_sample=False, max_new_tokens=MAX_TOKENS)[0]


def metric(url: str, name: str, **labels) -> float:
    """Sum of a Prometheus sample over the series whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(url + "/metrics", headers=AUTH).text.splitlines():
        if line.startswith((name + "{", name + " ")):
            series, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
    return total


# ---------------------------------------------------------------------- moderations


def test_moderations_text_image_and_mixed_match_the_gate(server, assets, direct, tol):
    from safety_modules.images import blank_image

    photo, refused = assets.photos[1], assets.refused[0]
    cases = [
        ("What is shown in this image?", None, blank_image(), ["text"]),  # text only: the blank image
        ("", photo, photo, ["image"]),
        ("Describe the picture in detail.", photo, photo, ["image", "text"]),
        ("What is shown in this image?", refused, refused, ["image", "text"]),
    ]
    actions = []
    for text, image, scored, applied in cases:
        parts = ([{"type": "text", "text": text}] if text else []) + (
            [{"type": "image_url", "image_url": {"url": data_url(image)}}] if image is not None else []
        )
        response = client(server).moderations.create(model="tiny", input=parts if image is not None else text)
        result = response.results[0]
        want = direct_decision(direct, scored, text)
        safety = result.model_extra["safety"]
        assert safety["action"] == want.action and safety["rule"] == want.rule
        assert result.flagged == (want.action != "allow")
        scores = result.category_scores.model_extra
        for name, p in want.type_probs.items():
            if name != "safe":
                torch.testing.assert_close(scores[name], p, **tol)
        assert result.category_applied_input_types.model_extra["privacy"] == applied
        actions.append(safety["action"])
    assert actions[-1] == "refuse" and actions[1] != "refuse", "the policy refuses the blank image, not the photo"


def test_moderations_list_of_strings_gives_one_result_each(server):
    response = client(server).moderations.create(model="tiny", input=["one", "two", "three"])
    assert len(response.results) == 3


# ---------------------------------------------------------------------- chat


@pytest.mark.parametrize("which", ["photo", "refused"])
def test_chat_equals_direct_gated_generation_with_and_without_stream(server, assets, direct, which):
    image = assets.photos[0] if which == "photo" else assets.refused[0]
    prompt = "What is shown in this image?"
    want = direct_answer(direct, image, prompt)
    api = client(server)
    reply = api.chat.completions.create(
        model="tiny", messages=user(prompt, image), max_tokens=MAX_TOKENS, temperature=0
    )
    choice = reply.choices[0]
    assert choice.message.content == want.text
    assert reply.model_extra["safety"]["action"] == want.decision.action
    pieces, last = [], None
    for chunk in api.chat.completions.create(
        model="tiny", messages=user(prompt, image), max_tokens=MAX_TOKENS, temperature=0, stream=True
    ):
        pieces.append(chunk.choices[0].delta.content or "")
        last = chunk
    assert "".join(pieces) == want.text
    assert last.choices[0].finish_reason == choice.finish_reason
    assert last.model_extra["safety"]["action"] == want.decision.action
    if which == "refused":
        assert want.decision.action == "refuse" and choice.finish_reason == "content_filter"
        assert want.token_ids is None  # the language model never ran
    else:
        assert choice.finish_reason in ("stop", "length")


def test_stop_sequence_is_cut_from_the_answer(server, assets, direct):
    want = direct_answer(direct, assets.photos[0], "What is shown in this image?").text
    stop = want.split()[1]  # a word from inside the greedy answer
    reply = client(server).chat.completions.create(
        model="tiny",
        messages=user("What is shown in this image?", assets.photos[0]),
        max_tokens=MAX_TOKENS,
        temperature=0,
        stop=[stop],
    )
    assert reply.choices[0].message.content == want[: want.find(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_a_stream_closed_by_its_client_stops_generating(server, assets):
    cancelled = metric(server, "safevlm_streams_cancelled_total")
    body = {
        "model": "tiny",
        "messages": user("Describe the picture in detail.", assets.photos[1]),
        "max_tokens": 2000,
        "temperature": 0,
        "stream": True,
    }
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data:")
        for _ in range(100):  # the server notices at its next write
            if metric(server, "safevlm_streams_cancelled_total") > cancelled:
                break
            time.sleep(0.1)
        assert metric(server, "safevlm_streams_cancelled_total") == cancelled + 1
        ok = http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4})
        assert ok.status_code == 200


def test_models_and_health(server):
    assert [m.id for m in client(server).models.list().data]
    assert httpx.get(server + "/health").json()["status"] == "ok"


# ---------------------------------------------------------------------- concurrency


def test_64_concurrent_requests_are_batched_and_equal_sequential_answers(server, assets):
    images = assets.photos + assets.refused
    prompts = ["What is shown in this image?", "Hi"]
    combos = [(i, p) for i in range(len(images)) for p in prompts]  # 8 distinct requests, each sent 8 times
    urls = [data_url(image) for image in images]

    def body(i, p):
        return {"model": "tiny", "messages": user(p, url=urls[i]), "max_tokens": MAX_TOKENS, "temperature": 0}

    with httpx.Client(base_url=server, headers=AUTH, timeout=120) as http:
        sequential = {c: http.post("/v1/chat/completions", json=body(*c)).json() for c in combos}
    batches_before = metric(server, "safevlm_batch_size_count", kind="generate")
    rows_before = metric(server, "safevlm_batch_size_sum", kind="generate")

    async def run_all():
        async with httpx.AsyncClient(base_url=server, headers=AUTH, timeout=120) as http:
            return await asyncio.gather(*(http.post("/v1/chat/completions", json=body(*c)) for c in combos * 8))

    responses = asyncio.run(run_all())
    assert [r.status_code for r in responses] == [200] * 64
    for c, response in zip(combos * 8, responses):
        got, want = response.json(), sequential[c]
        assert got["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]
        assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
        assert got["safety"]["action"] == want["safety"]["action"]
    actions = {r.json()["safety"]["action"] for r in responses}
    assert "refuse" in actions and actions - {"refuse"}, "the batch mixes refused and answered rows"
    batches = metric(server, "safevlm_batch_size_count", kind="generate") - batches_before
    rows = metric(server, "safevlm_batch_size_sum", kind="generate") - rows_before
    assert rows == 64 and batches < 64, f"64 requests ran in {batches} model calls: no batching"


# ---------------------------------------------------------------------- bad input


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's signature)."""
    data = bytearray(png_bytes(__import__("PIL.Image", fromlist=["Image"]).new("L", (1, 1))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def test_every_bad_request_is_a_4xx_and_the_server_stays_healthy(server, assets):
    photo = data_url(assets.photos[0])
    chat = "/v1/chat/completions"
    cases = {
        "invalid base64": (chat, user("hi", url="data:image/png;base64,!!!not-base64!!!"), 400, "invalid_base64"),
        "not an image": (
            chat,
            user("hi", url="data:image/png;base64," + base64.b64encode(b"hello").decode()),
            400,
            "image_not_an_image",
        ),
        "decompression bomb": (
            chat,
            user("hi", url="data:image/png;base64," + base64.b64encode(bomb_png()).decode()),
            400,
            "image_too_large",
        ),
        "two images": (
            chat,
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": photo}},
                        {"type": "image_url", "image_url": {"url": photo}},
                    ],
                }
            ],
            400,
            "too_many_images",
        ),
        "remote url": (chat, user("hi", url="http://127.0.0.1:9/cat.png"), 400, "remote_images_disabled"),
        "empty messages": (chat, [], 400, None),
        "oversized body": (chat, user("x" * (3 * 1024 * 1024)), 413, "body_too_large"),
        "too many strings": ("/v1/moderations", None, 400, "too_many_inputs"),
        "image placeholder": (chat, user("<image> what?"), 400, None),
    }
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as http:
        for name, (path, messages, status, code) in cases.items():
            body = (
                {"model": "tiny", "messages": messages, "max_tokens": 4}
                if messages is not None
                else {"input": ["a"] * 200}
            )
            response = http.post(path, json=body)
            assert response.status_code == status, (name, response.text)
            error = response.json()["error"]
            assert error["message"] and error["type"], name
            if code:
                assert error["code"] == code, (name, error)
        # A chunked body (no Content-Length) is cut off at the cap too.
        chunked = http.post(
            chat, content=iter([b"x" * (1024 * 1024)] * 3), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"
        for bad in ({"input": 42}, {"nothing": 1}):
            assert http.post("/v1/moderations", json=bad).status_code == 400
        assert http.post(chat, content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
        wrong = http.post(chat, json={"messages": user("hi")}, headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/v1/models", headers={"Authorization": ""}).status_code == 401
        assert http.get("/no/such/path").status_code == 404
        # Still healthy, and a good request is answered as before.
        assert httpx.get(server + "/health").json()["status"] == "ok"
        ok = http.post(chat, json={"model": "tiny", "messages": user("hi", url=photo), "max_tokens": 4})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()
