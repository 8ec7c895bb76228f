"""OpenAI conformance against the real server with the official client: usage, conversations, model names,
unsupported options, text-only refusals."""

from __future__ import annotations

import json

import pytest

from safety_modules.gate import Gate

from .conftest import require_serve_packages

require_serve_packages()
import httpx
import openai

from .test_server import AUTH, MAX_TOKENS, client, data_url, user

pytestmark = [pytest.mark.timeout(300), pytest.mark.device_sensitive]


def direct_generate(direct, image, prompt):
    model, policy = direct
    return Gate(model, policy).generate([image], [prompt], do_sample=False, max_new_tokens=MAX_TOKENS)[0]


def test_usage_in_the_response_and_as_the_last_stream_chunk(server, assets, direct):
    prompt = "What is shown in this image?"
    want = direct_generate(direct, assets.photos[0], prompt)
    api = client(server)
    reply = api.chat.completions.create(
        model="tiny", messages=user(prompt, assets.photos[0]), max_tokens=MAX_TOKENS, temperature=0
    )
    assert reply.choices[0].message.content == want.text
    usage = reply.usage
    assert usage.prompt_tokens == want.prompt_tokens > 576  # text, image and safety tokens
    assert usage.completion_tokens == len(want.token_ids)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    chunks = list(
        api.chat.completions.create(
            model="tiny",
            messages=user(prompt, assets.photos[0]),
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage == usage
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == want.text
    plain = list(
        api.chat.completions.create(
            model="tiny", messages=user(prompt, assets.photos[0]), max_tokens=MAX_TOKENS, temperature=0, stream=True
        )
    )
    assert all(c.usage is None and c.choices for c in plain)  # no usage chunk unless asked


def test_system_message_and_history_continue_the_conversation_in_the_bases_format(server, assets, direct):
    photo = assets.photos[0]
    messages = [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is shown in this image?"},
                {"type": "image_url", "image_url": {"url": data_url(photo)}},
            ],
        },
    ]
    reply = client(server).chat.completions.create(
        model="tiny", messages=messages, max_tokens=MAX_TOKENS, temperature=0
    )
    conversation = [
        {"from": "system", "value": "You are a careful assistant."},
        {"from": "human", "value": "Hello"},
        {"from": "gpt", "value": "Hi, how can I help?"},
        {"from": "human", "value": "What is shown in this image?"},
    ]
    want = direct_generate(direct, photo, conversation)
    assert reply.choices[0].message.content == want.text
    assert reply.usage.prompt_tokens == want.prompt_tokens
    # The head read the conversation's user text with the image.
    model, policy = direct
    scores = model.assess([photo], ["Hello What is shown in this image?"])
    decision = policy.decide_batch(scores.level_probs, scores.type_probs)[0]
    got = reply.model_extra["safety"]
    assert got["action"] == decision.action
    assert got["level_probs"] == pytest.approx(decision.level_probs, abs=1e-4)
    # Without the history the answer is another one: the history reached the model.
    alone = direct_generate(direct, photo, "What is shown in this image?")
    assert alone.prompt_tokens < want.prompt_tokens


def test_unknown_model_is_404_and_every_alias_and_moderation_name_is_served(server):
    api = client(server)
    with pytest.raises(openai.NotFoundError) as err:
        api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert err.value.code == "model_not_found"
    reply = api.chat.completions.create(model="tiny-alias", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert reply.model == "tiny-alias"
    assert [m.id for m in api.models.list().data] == ["tiny", "tiny-alias"]
    for name in ("omni-moderation-latest", "text-moderation-latest", "tiny"):
        assert api.moderations.create(model=name, input="hello").model == name
    with pytest.raises(openai.NotFoundError):
        api.moderations.create(model="gpt-4o", input="hello")
    with pytest.raises(openai.NotFoundError):  # the moderation names are not chat models
        api.chat.completions.create(
            model="omni-moderation-latest", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )


def test_logprobs_and_a_boolean_n_are_refused_with_a_400_naming_them(server):
    api = client(server)
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2, logprobs=True, top_logprobs=2
        )
    assert "not supported" in err.value.message and err.value.param == "logprobs"
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "n": True}
    response = httpx.post(server + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"


def test_a_refused_text_only_request_is_not_told_about_an_image(server, assets):
    """The test policy refuses the blank image that text-only input is scored with."""
    api = client(server)
    reply = api.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello there"}], max_tokens=MAX_TOKENS
    )
    assert reply.choices[0].finish_reason == "content_filter"
    text = reply.choices[0].message.content
    assert text.startswith("I'm sorry") and "image" not in text.lower()
    assert reply.model_extra["safety"]["refusal"] == text
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in api.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hello there"}], max_tokens=MAX_TOKENS, stream=True
        )
    )
    assert streamed == text
    moderation = api.moderations.create(model="tiny", input="Hello there").results[0]
    assert moderation.flagged and "image" not in moderation.model_extra["safety"]["refusal"].lower()
    # With the refused image the refusal does speak of the image.
    with_image = api.chat.completions.create(
        model="tiny", messages=user("Hello there", assets.refused[0]), max_tokens=MAX_TOKENS
    )
    assert "image" in with_image.choices[0].message.content


def test_the_body_is_a_pydantic_validation_error_in_openai_shape(server):
    response = httpx.post(
        server + "/v1/chat/completions",
        headers=AUTH,
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
    )
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "temperature" and error["type"] == "invalid_request_error"
    assert json.dumps(response.json())  # plain JSON, no pydantic internals
