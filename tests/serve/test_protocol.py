"""Request parsing, stop strings and hint placement, without a server."""

from __future__ import annotations

import pytest

from safety_modules.serve.protocol import (
    ApiError,
    StopFilter,
    parse_chat,
    parse_moderation,
    truncate_at_stop,
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


def chat(**body):
    return parse_chat({"messages": [{"role": "user", "content": "hi"}], **body}, 64, 512, single_turn=True)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10_000}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"stop": [""]}, "stop"),
        ({"n": 2}, "n"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_bad_sampling_settings_name_the_field(body, param):
    with pytest.raises(ApiError) as err:
        chat(**body)
    assert err.value.status == 400 and err.value.param == param


def test_chat_parsing_defaults_and_one_turn_only():
    req = chat()
    assert (req.input.text, req.input.image_url, req.sampling.max_tokens, req.stream) == ("hi", None, 64, False)
    assert chat(temperature=0, stop="x", max_completion_tokens=5).sampling.generation_kwargs(None)["do_sample"] is False
    history = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    with pytest.raises(ApiError, match="single user message"):
        parse_chat({"messages": history}, 64, 512, single_turn=True)
    assert parse_chat({"messages": history}, 64, 512, single_turn=False).input.text == "hi"


def test_moderation_input_shapes():
    assert [i.text for i in parse_moderation({"input": ["a", "b"]})] == ["a", "b"]
    parts = parse_moderation(
        {
            "input": [
                {"type": "text", "text": "a"},
                {"type": "text", "text": "b"},
                {"type": "image_url", "image_url": {"url": "data:x"}},
            ]
        }
    )
    assert len(parts) == 1 and parts[0].text == "a b" and parts[0].image_url == "data:x"
    for bad in ({"input": []}, {"input": 3}, {"input": [{"type": "audio"}]}, {}, {"input": ["a"] * 129}):
        with pytest.raises(ApiError):
            parse_moderation(bad)


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
