"""Request models (pydantic, OpenAI's shapes), conversations, stop strings and hint placement, without a server."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from safety_modules.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    ModerationRequest,
    StopFilter,
    truncate_at_stop,
    validation_error,
)

from .conftest import require_serve_packages


def test_stop_filter_streams_the_same_text_as_the_cut_answer():
    text = "The cat sat on the mat. STOP and more text"
    for size in (1, 2, 3, 7):
        filt = StopFilter(("STOP", "zz"))
        pieces = [filt.feed(text[i : i + size]) for i in range(0, len(text), size)] + [filt.finish()]
        assert "".join(pieces) == truncate_at_stop(text, ("STOP", "zz"))[0] == "The cat sat on the mat. "
        assert filt.stopped
    filt = StopFilter(("STOP",))
    assert "".join([filt.feed("no sto"), filt.feed("p here ST"), filt.finish()]) == "no stop here ST"
    assert not filt.stopped


def chat(**body) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **body})


@pytest.mark.parametrize(
    "body, param",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"n": True}, "n"),  # a bool is not a number
        ({"stream": "yes"}, "stream"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages.0.content"),
    ],
)
def test_bad_fields_are_a_400_naming_the_field(body, param):
    with pytest.raises(ValidationError) as err:
        chat(**body)
    error = validation_error(err.value)
    assert error.status == 400 and error.param.startswith(param), error.body()


@pytest.mark.parametrize("body", [{"n": 2}, {"stop": [""]}, {"stop": ["a", "b", "c", "d", "e"]}])
def test_unsupported_values_are_refused(body):
    with pytest.raises(ValidationError):
        chat(**body)


@pytest.mark.parametrize(
    "body, param",
    [({"max_tokens": 10_000}, "max_tokens"), ({"logprobs": True}, "logprobs"), ({"top_logprobs": 2}, "top_logprobs")],
)
def test_sampling_limits_and_logprobs_say_what_is_wrong(body, param):
    with pytest.raises(ApiError) as err:
        chat(**body).sampling(64, 512)
    assert err.value.status == 400 and err.value.param == param
    if param != "max_tokens":
        assert "not supported" in err.value.message


def test_defaults_and_unknown_fields_are_kept():
    req = chat(user="someone", metadata={"a": 1})
    sampling = req.sampling(64, 512)
    assert (req.conversation(), req.image_url(), sampling.max_tokens, req.stream) == ("hi", None, 64, False)
    assert (
        chat(temperature=0, stop="x", max_completion_tokens=5).sampling(64, 512).generation_kwargs(None)["do_sample"]
        is False
    )
    assert chat(stream_options={"include_usage": True}).include_usage


def test_system_and_history_become_render_turns_with_the_image_from_any_user_turn():
    req = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi!"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what"},
                        {"type": "image_url", "image_url": {"url": "data:x"}},
                    ],
                },
                {"role": "user", "content": "is this?"},
            ]
        }
    )
    assert req.image_url() == "data:x"
    assert req.conversation() == [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "hello"},
        {"from": "gpt", "value": "hi!"},
        {"from": "human", "value": "what is this?"},
    ]
    for messages in (
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],  # ends with the assistant
        [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}, {"role": "user", "content": "b"}],
    ):
        with pytest.raises(ApiError):
            ChatCompletionRequest.model_validate({"messages": messages}).conversation()
    two = [{"type": "image_url", "image_url": {"url": "u"}}]
    with pytest.raises(ApiError, match="one image"):
        ChatCompletionRequest.model_validate(
            {
                "messages": [
                    {"role": "user", "content": two},
                    {"role": "assistant", "content": "x"},
                    {"role": "user", "content": two},
                ]
            }
        ).image_url()


def test_moderation_input_shapes():
    assert [i.text for i in ModerationRequest.model_validate({"input": ["a", "b"]}).inputs()] == ["a", "b"]
    parts = ModerationRequest.model_validate(
        {
            "input": [
                {"type": "text", "text": "a"},
                {"type": "text", "text": "b"},
                {"type": "image_url", "image_url": {"url": "data:x"}},
            ]
        }
    ).inputs()
    assert len(parts) == 1 and parts[0].text == "a b" and parts[0].image_url == "data:x"
    for bad in ({"input": 3}, {"input": [{"type": "audio"}]}, {}):
        with pytest.raises(ValidationError):
            ModerationRequest.model_validate(bad)
    for bad in ({"input": []}, {"input": ["a"] * 129}):
        with pytest.raises(ApiError):
            ModerationRequest.model_validate(bad).inputs()


def test_hint_goes_after_the_last_user_text():
    require_serve_packages()
    from safety_modules.serve.proxy import chat_url, with_hint

    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "u"}}, {"type": "text", "text": "What?"}],
        },
    ]
    out = with_hint(messages, "Safe Hint: careful.")
    assert out[2]["content"][-1] == {"type": "text", "text": "Safe Hint: careful."}
    assert messages[2]["content"][-1]["type"] == "text" and len(messages[2]["content"]) == 2  # not mutated
    assert with_hint([{"role": "user", "content": "Hi"}], "H")[0]["content"] == "Hi H"
    assert chat_url("http://h:1/v1/") == chat_url("http://h:1") == "http://h:1/v1/chat/completions"


def test_json_nesting_is_measured_without_parsing():
    from safety_modules.serve.inputs import json_depth, parse_json

    assert json_depth(b'{"a": [1, {"b": "[[[[ not counted"}]}') == 3
    assert json_depth(b'"\\"[[["') == 0  # an escaped quote does not end the string
    with pytest.raises(ApiError) as err:
        parse_json(b"[" * 100_000, 64)
    assert err.value.status == 400 and err.value.code == "json_too_deep"
    assert parse_json(b'{"a": [[1]]}', 64) == {"a": [[1]]}
