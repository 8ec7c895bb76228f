"""Gate.generate: one vision pass, mixed batches, refusal short-circuit, base equivalence, streaming, CLI."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import TextStreamer

from safety_modules import Gate, SafetyPolicy
from safety_modules.cli import main
from safety_modules.modeling.llava.conversation import chat_text
from safety_modules.policy import PolicyError
from safety_modules.taxonomy import Taxonomy

GREEDY = dict(do_sample=False, max_new_tokens=10)

HINT_ALL = {"name": "hint_all", "defaults": {"hint": 0.0, "refuse": None}}
REFUSE_ALL = {"name": "refuse_all", "defaults": {"hint": None, "refuse": 0.0}}


class CallCounter:
    """Forward hook recording the batch size of every call of a module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.batches: list[int] = []
        self.handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output) -> None:
        first = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        self.batches.append(first.shape[0])

    def reset(self) -> None:
        self.batches.clear()


def base_greedy(model, images, texts, **kwargs):
    """The base model's own generate on processor inputs; new tokens per row, cut after the first EOS."""
    enc = model.processor(images=images, text=texts, padding=True, return_tensors="pt")
    out = model.base.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1] :]
    eos = model.base.generation_config.eos_token_id
    rows = []
    for row in out.tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def template(model, question: str, hint: str | None = None) -> str:
    """The chat text built directly with the processor's template (independently of chat_text)."""
    content = [{"type": "image"}, {"type": "text", "text": question}]
    if hint:
        content.append({"type": "text", "text": hint})
    return model.processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def test_hint_sits_after_the_question_before_the_assistant_turn(tiny_model):
    text = chat_text(tiny_model.processor, "What is this?", "Safe Hint: be careful.")
    assert text == "USER: <image>\nWhat is this? Safe Hint: be careful. ASSISTANT:"


@pytest.mark.device_sensitive
def test_allow_all_without_safety_tokens_is_the_base_model_token_for_token(tiny_model, photos):
    questions = ["What is shown in this image?", "Describe the picture in detail, please."]
    no_tokens = Gate(tiny_model, inject_safety_tokens=False)
    answers = no_tokens.generate(photos[:2], questions, SafetyPolicy.allow_all(), **GREEDY)
    expected = base_greedy(tiny_model, photos[:2], [template(tiny_model, q) for q in questions], **GREEDY)
    assert [a.token_ids for a in answers] == expected  # batched, left-padded, on both sides
    for photo, question, want in zip(photos, questions, expected):
        alone = no_tokens.generate(photo, question, SafetyPolicy.allow_all(), **GREEDY)
        assert (
            alone[0].token_ids
            == want
            == base_greedy(tiny_model, [photo], [template(tiny_model, question)], **GREEDY)[0]
        )
        assert alone[0].text == tiny_model.processor.tokenizer.decode(want, skip_special_tokens=True).strip()
    assert all(a.decision.action == "allow" and a.decision.rule == "allow_all" for a in answers)


def test_safety_tokens_b_are_in_the_language_model_input(tiny_model, photos):
    lengths = []
    hook = tiny_model.base.model.language_model.register_forward_hook(
        lambda module, args, kwargs, out: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    Gate(tiny_model).generate(photos[0], "What is this?", SafetyPolicy.allow_all(), max_new_tokens=1)
    Gate(tiny_model, inject_safety_tokens=False).generate(
        photos[0], "What is this?", SafetyPolicy.allow_all(), max_new_tokens=1
    )
    hook.remove()
    # one prefill call each; they differ by exactly the number of safety tokens B
    assert len(lengths) == 2
    assert lengths[0] - lengths[1] == tiny_model.config.num_llm_tokens


@pytest.mark.device_sensitive
def test_mixed_batch_refused_sample_skips_the_language_model(tiny_model, photos):
    policies = [SafetyPolicy.allow_all(), SafetyPolicy.from_dict(HINT_ALL), SafetyPolicy.from_dict(REFUSE_ALL)]
    questions = ["What is this?", "Describe the image in detail.", "Read the text in the image."]
    lm = CallCounter(tiny_model.base.model.language_model)
    vision = CallCounter(tiny_model.base.model.vision_tower.embeddings)  # once per vision pass
    answers = Gate(tiny_model).generate(photos, questions, policies, **GREEDY)

    assert [a.decision.action for a in answers] == ["allow", "hint", "refuse"]
    assert [a.decision.rule for a in answers] == ["allow_all", "hint_threshold", "refuse_threshold"]
    assert [a.decision.policy for a in answers] == ["allow_all", "hint_all", "refuse_all"]
    assert vision.batches == [3]  # one vision pass for the whole batch, shared by head and answers
    assert lm.batches and all(b == 2 for b in lm.batches)  # only the two non-refused samples
    refused = answers[2]
    assert refused.text == refused.decision.refusal and refused.token_ids is None
    assert refused.decision.timings["generation_s"] == 0.0
    assert set(answers[0].decision.timings) == {"vision_s", "scoring_s", "generation_s", "total_s"}

    # Each answer equals the one that sample gets alone.
    for i in (0, 1):
        alone = Gate(tiny_model).generate(photos[i], questions[i], policies[i], **GREEDY)[0]
        assert alone.token_ids == answers[i].token_ids
        assert alone.text == answers[i].text

    # With everything refused the language model is never called.
    lm.reset()
    all_refused = Gate(tiny_model).generate(photos, questions, policies[2], **GREEDY)
    assert lm.batches == []
    assert all(a.decision.action == "refuse" for a in all_refused)


@pytest.mark.device_sensitive
def test_hint_goes_into_the_prompt_through_the_chat_template(tiny_model, photos):
    policy = SafetyPolicy.from_dict(HINT_ALL)
    answer = Gate(tiny_model, policy, inject_safety_tokens=False).generate(photos[1], "Describe the image.", **GREEDY)[
        0
    ]
    assert answer.decision.action == "hint"
    text = template(tiny_model, "Describe the image.", "Safe Hint: " + answer.decision.hint)
    assert answer.token_ids == base_greedy(tiny_model, [photos[1]], [text], **GREEDY)[0]


@pytest.mark.device_sensitive
def test_refusal_generate_keeps_the_reference_behaviour(tiny_model, photos):
    policy = SafetyPolicy.from_dict(REFUSE_ALL)
    lm = CallCounter(tiny_model.base.model.language_model)
    gate = Gate(tiny_model, policy, refusal="generate", inject_safety_tokens=False)
    answer = gate.generate(photos[0], "What is this?", **GREEDY)[0]
    assert lm.batches and answer.token_ids is not None
    decision = answer.decision
    assert decision.action == "refuse" and decision.level == "reject"
    assert decision.hint == policy.hint_text("reject", decision.type)
    text = template(tiny_model, "What is this?", "Safe Hint: " + decision.hint)
    assert answer.token_ids == base_greedy(tiny_model, [photos[0]], [text], **GREEDY)[0]


def test_default_policy_is_used_when_none_is_given(tiny_model, photos):
    answers = Gate(tiny_model).generate(photos[:2], ["What is this?"] * 2, max_new_tokens=2)
    assert [a.decision.policy for a in answers] == ["default", "default"]
    assert all(sum(a.decision.type_probs.values()) == pytest.approx(1.0, abs=1e-5) for a in answers)


@pytest.mark.device_sensitive
def test_image_paths_are_decoded_like_pil_images(tiny_model, photos, tmp_path):
    path = tmp_path / "photo.png"
    photos[2].save(path)
    policy = SafetyPolicy.allow_all()
    from_path = Gate(tiny_model).generate([path], ["What is this?"], policy, do_sample=False, max_new_tokens=3)[0]
    from_pil = Gate(tiny_model).generate([photos[2]], ["What is this?"], policy, do_sample=False, max_new_tokens=3)[0]
    assert from_path.token_ids == from_pil.token_ids
    assert from_path.decision.type_probs == from_pil.decision.type_probs


def break_head_with_nan(model):
    with torch.no_grad():
        model.safety.head.level_classifier.bias.fill_(float("nan"))


def break_head_with_error(model):
    # a corrupted query of the wrong width: the attention raises
    model.safety.head.query = torch.nn.Parameter(torch.zeros(1, 1, 3))


@pytest.mark.parametrize("breaker", [break_head_with_nan, break_head_with_error], ids=["nan", "error"])
@pytest.mark.parametrize("fail_closed", [True, False])
def test_scoring_failure_fail_closed_both_ways(tiny_model, photos, breaker, fail_closed):
    breaker(tiny_model)
    policy = SafetyPolicy.from_dict({"fail_closed": fail_closed})
    lm = CallCounter(tiny_model.base.model.language_model)
    answer = Gate(tiny_model).generate(photos[0], "What is this?", policy, max_new_tokens=3)[0]
    decision = answer.decision
    assert decision.scoring_failed and decision.rule == "scoring_failed" and decision.error
    if fail_closed:
        assert decision.action == "refuse" and answer.text == policy.scoring_failure_refusal
        assert lm.batches == [] and answer.token_ids is None
    else:
        assert decision.action == "allow" and lm.batches and len(answer.token_ids) > 0
    json.dumps(answer.to_dict(), allow_nan=False)


class CollectingStreamer(TextStreamer):
    """A transformers text streamer that keeps the streamed text and token ids instead of printing them."""

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.chunks: list[str] = []
        self.token_ids: list[int] = []
        self.puts = 0
        self.ended = False

    def put(self, value) -> None:
        if self.puts:  # the first put is the prompt
            self.token_ids += value.reshape(-1).tolist()
        self.puts += 1
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.chunks.append(text)
        self.ended = self.ended or stream_end


@pytest.mark.parametrize(
    "policy", [SafetyPolicy.allow_all(), SafetyPolicy.from_dict(REFUSE_ALL)], ids=["allowed", "refused"]
)
def test_streaming_a_single_request(tiny_model, photos, policy):
    streamer = CollectingStreamer(tiny_model.processor.tokenizer)
    answer = Gate(tiny_model).generate(photos[0], "What is this?", policy, streamer=streamer, **GREEDY)[0]
    assert streamer.ended and streamer.token_ids
    tokenizer = tiny_model.processor.tokenizer
    if answer.token_ids is not None:
        assert streamer.token_ids == answer.token_ids
    # Compared on the ids: the random tiny model emits byte-fallback pieces, which a streamer
    # decoding chunk by chunk may render as different replacement characters.
    assert tokenizer.decode(streamer.token_ids, skip_special_tokens=True).strip() == answer.text
    if answer.token_ids is None:  # the refusal is plain text: the streamed text is exactly it
        assert "".join(streamer.chunks).strip() == answer.text


def test_bad_requests_get_clear_errors(tiny_model, photos):
    with pytest.raises(ValueError, match="single request"):
        Gate(tiny_model).generate(photos[:2], ["a", "b"], streamer=CollectingStreamer(tiny_model.processor.tokenizer))
    with pytest.raises(ValueError, match="2 images for 3 prompts"):
        Gate(tiny_model).generate(photos[:2], ["a", "b", "c"])
    with pytest.raises(ValueError, match="image placeholder"):
        Gate(tiny_model).generate(photos[0], "look <image> here")
    with pytest.raises(ValueError, match="image placeholder"):  # decide reads prompts as generate does
        Gate(tiny_model).decide(photos[0], "look <image> here")
    with pytest.raises(ValueError, match="refusal must be one of"):
        Gate(tiny_model, refusal="silent")
    with pytest.raises(PolicyError, match="was built for"):
        other = Taxonomy(types=("hate", "safe"))
        Gate(tiny_model).generate(photos[0], "a", SafetyPolicy.default(other))
    with pytest.raises(PolicyError, match="was built for"):
        Gate(tiny_model, SafetyPolicy.default(other))


# ---------------------------------------------------------------- CLI


def test_cli_generate_json(tiny_dir, photos, tmp_path, capsys):
    image = tmp_path / "photo.png"
    photos[1].save(image)
    command = ["generate", "--base", str(tiny_dir), "--image", str(image), "--prompt", "What is this?", "--json"]
    rc = main([*command, "--max-new-tokens", "4"])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    record = json.loads(out[0])
    assert isinstance(record["answer"], str)
    # fresh (untrained) modules score near uniform: the default policy allows
    assert (record["decision"]["action"], record["decision"]["policy"]) == ("allow", "default")
    assert set(record["decision"]["type_probs"]) == set(Taxonomy().types)

    policy = tmp_path / "refuse.yaml"
    policy.write_text(yaml.safe_dump(REFUSE_ALL))
    rc = main([*command, "--policy", str(policy)])
    record = json.loads(capsys.readouterr().out)
    assert rc == 0 and record["decision"]["action"] == "refuse" and record["answer"] == record["decision"]["refusal"]


def test_cli_generate_rejects_an_unknown_type_in_the_policy(tiny_dir, photos, tmp_path, capsys):
    image = tmp_path / "photo.png"
    photos[0].save(image)
    policy = tmp_path / "bad.yaml"
    policy.write_text("types:\n  pornography: {refuse: 0.2}\n")
    rc = main(["generate", "--base", str(tiny_dir), "--image", str(image), "--prompt", "hi", "--policy", str(policy)])
    assert rc == 2
    assert "'pornography'" in capsys.readouterr().err
