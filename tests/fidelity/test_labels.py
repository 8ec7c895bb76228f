"""Training labels are exactly what each assistant turn generates after the inference prompt: its text and
its EOS, checked position by position on records whose answers also occur in their questions, for the
llava-hf format (HF bases, also with llava-hf's own hub chat template) and the vicuna_v1 format (original
checkpoints, against llava's own ``preprocess_v1``), single- and multi-turn."""

from __future__ import annotations

import pytest
import torch

from safety_modules.modeling.llava import load_base
from safety_modules.modeling.llava.conversation import (
    IGNORE_INDEX,
    IMAGE_TOKEN,
    LLAVA_CHAT_TEMPLATE,
    VICUNA_V1,
    chat_text,
    conversation_format,
    encode_conversation,
    render,
)
from tests.fidelity.oracle import (
    SlowLlamaTokenizer,
    build_original_checkpoint,
    llava_preprocess,
)
from tests.fidelity.test_original_oracle import collapse_image_run

# llava-hf/llava-1.5-7b-hf's chat_template.json: "{answer} " after ASSISTANT:, no EOS.
LLAVA_HF_HUB_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def turns(*texts: str) -> list[dict[str, str]]:
    return [
        {"from": "human" if i % 2 == 0 else "gpt", "value": (IMAGE_TOKEN + "\n" if i == 0 else "") + t}
        for i, t in enumerate(texts)
    ]


RECORDS = {
    "multiple_choice": turns("Which animal is it? A. cat B. dog\nAnswer with the option's letter.", "A"),
    "yes_no": turns("Is there a dog? answer yes or no", "yes"),
    "digits": turns("How many birds, 3 or 12?", "12"),
    "multi_turn": turns(
        "Is it a cat? Answer yes or no.", "yes", "Is it a dog? yes or no", "no", "Which is it? A. cat B. dog", "A. cat"
    ),
}


@pytest.fixture(scope="module")
def original_dir(tmp_path_factory):
    return build_original_checkpoint(tmp_path_factory.mktemp("original-labels"))


@pytest.fixture(params=["llava_hf", "llava_hf_hub_template", "vicuna_v1"])
def processor(request, tiny_dir, original_dir):
    if request.param == "vicuna_v1":
        return load_base(original_dir)[1]
    processor = load_base(tiny_dir)[1]
    if request.param == "llava_hf_hub_template":
        processor.chat_template = LLAVA_HF_HUB_TEMPLATE
    return processor


def expected_label_positions(processor, record) -> list[int]:
    """Positions to train, derived independently: for each assistant turn, the tokens between the inference
    prompt up to it (``...ASSISTANT:``) and the conversation up to its EOS, by tokenising those prefixes."""
    tok, fmt = processor.tokenizer, conversation_format(processor)
    positions: list[int] = []
    for k in range(1, len(record), 2):
        prompt = render(fmt, record[:k], tok.eos_token, add_generation_prompt=True).text
        upto = render(fmt, record[: k + 1], tok.eos_token).text
        start, end = len(tok(prompt).input_ids), len(tok(upto).input_ids)
        positions.extend(range(start, end))
    return positions


@pytest.mark.parametrize("name", list(RECORDS))
def test_labels_are_each_assistant_turn_and_its_eos(processor, name):
    record = RECORDS[name]
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    ids, labels = encode_conversation(processor, record, num_image_tokens=5)
    # Compare on the text ids (one <image>), where the independent derivation lives.
    first_image = ids.tolist().index(image_id)
    flat_ids = collapse_image_run(ids.tolist(), image_id)
    flat_labels = labels.tolist()[: first_image + 1] + labels.tolist()[first_image + 5 :]
    assert len(flat_labels) == len(flat_ids)
    full = tok(render(conversation_format(processor), record, tok.eos_token).text).input_ids
    assert [(-200 if t == image_id else t) for t in full] == flat_ids

    expected = expected_label_positions(processor, record)
    for j, label in enumerate(flat_labels):
        if j in expected:
            assert label == flat_ids[j], f"position {j} ({tok.convert_ids_to_tokens(flat_ids[j])}) must be trained"
        else:
            assert label == IGNORE_INDEX, f"position {j} ({tok.convert_ids_to_tokens(flat_ids[j])}) must be masked"
    # Every assistant turn ends with a trained EOS, and nothing but the answers is trained.
    answers = [t["value"] for t in record[1::2]]
    trained = labels[labels != IGNORE_INDEX].tolist()
    assert trained.count(tok.eos_token_id) == len(answers)
    assert tok.decode(trained).replace(" ", "") == "".join(a + tok.eos_token for a in answers).replace(" ", "")
    # No lone "▁" right before an EOS (llava-hf's template writes "{answer} ").
    for j, token in enumerate(trained[1:], 1):
        if token == tok.eos_token_id:
            assert tok.convert_ids_to_tokens(trained[j - 1]) != "▁"


def test_answer_inside_the_question_is_not_trained_there(tiny_dir):
    """The case the old collator got wrong: it searched the text for "A" and labelled the "A" of "A. cat"."""
    processor = load_base(tiny_dir)[1]
    tok = processor.tokenizer
    record = RECORDS["multiple_choice"]
    ids, labels = encode_conversation(processor, record, num_image_tokens=576)
    trained = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
    prompt_len = len(tok(chat_text(processor, record[0]["value"])).input_ids) + 575  # + the expanded image run
    assert trained == list(range(prompt_len, len(ids)))  # the answer "A" and its EOS, at the very end
    assert tok.decode(labels[trained]) == "A</s>"
    assert ids[:prompt_len].tolist().count(tok.convert_tokens_to_ids("▁A")) >= 1  # "A" is in the question too


def test_vicuna_v1_labels_equal_llavas_preprocess_v1(original_dir):
    """llava's own training preprocessing on its slow tokenizer is the oracle for ids and labels."""
    processor = load_base(original_dir)[1]
    assert conversation_format(processor) is VICUNA_V1
    slow = SlowLlamaTokenizer(original_dir / "tokenizer.model")
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    for name, record in RECORDS.items():
        ids, labels = encode_conversation(processor, record, num_image_tokens=1)
        expected_ids, expected_labels = llava_preprocess(record, slow)
        assert collapse_image_run(ids.tolist(), image_id) == expected_ids, name
        got_labels = [IGNORE_INDEX if t == image_id else lab for t, lab in zip(ids.tolist(), labels.tolist())]
        assert got_labels == expected_labels, name


def test_training_and_inference_render_a_prompt_alike(tiny_dir, original_dir):
    """Trailing whitespace, the image marker and the hint are handled the same way in both."""
    for folder in (tiny_dir, original_dir):
        processor = load_base(folder)[1]
        tok = processor.tokenizer
        assert chat_text(processor, "What is it?  \n") == chat_text(processor, "What is it?")
        record = turns("What is it?  \n", "A cat.")
        ids, _ = encode_conversation(processor, record, num_image_tokens=1)
        prompt = tok(chat_text(processor, "What is it?")).input_ids
        assert ids[: len(prompt)].tolist() == prompt


def test_llava_hf_format_matches_the_hub_template_at_inference(tiny_dir):
    processor = load_base(tiny_dir)[1]
    assert processor.chat_template == LLAVA_CHAT_TEMPLATE
    processor.chat_template = LLAVA_HF_HUB_TEMPLATE
    content = [{"type": "image"}, {"type": "text", "text": "What is it?"}, {"type": "text", "text": "Safe Hint: x."}]
    hub = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    assert chat_text(processor, "What is it?", "Safe Hint: x.") == hub


@pytest.mark.parametrize(
    "bad, message",
    [
        (turns("Q?", "A", "Q2?"), "ends with an assistant"),
        (
            [{"from": "human", "value": "<image>\nQ"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
            "alternate",
        ),
        (turns("Q?", "   "), "empty"),
    ],
)
def test_malformed_conversations_are_refused(tiny_dir, bad, message):
    processor = load_base(tiny_dir)[1]
    with pytest.raises(ValueError, match=message):
        encode_conversation(processor, bad, num_image_tokens=1)


def test_chat_template_of_each_format_renders_like_render(tiny_dir):
    """The Jinja templates handed to processors write what `render` writes (multi-turn, system prompt)."""
    processor = load_base(tiny_dir)[1]
    record = RECORDS["multi_turn"]
    messages = [
        {
            "role": "user" if t["from"] == "human" else "assistant",
            "content": ([{"type": "image"}] if i == 0 else [])
            + [{"type": "text", "text": t["value"].replace(IMAGE_TOKEN + "\n", "")}],
        }
        for i, t in enumerate(record)
    ]
    for fmt_template in (LLAVA_CHAT_TEMPLATE, VICUNA_V1.chat_template()):
        processor.chat_template = fmt_template
        text = processor.apply_chat_template(messages, tokenize=False)
        assert text == render(conversation_format(processor), record, processor.tokenizer.eos_token).text


def test_the_safety_head_reads_a_prompt_alike_in_training_and_inference(tiny_model):
    from safety_modules.data.format import question_text
    from safety_modules.modeling.safe_llava import head_prompt_inputs

    record = {"conversations": turns("  What is it?\n", "A cat.")}
    tok = tiny_model.processor.tokenizer
    trained = head_prompt_inputs(tok, [question_text(record)])
    served = head_prompt_inputs(tok, ["  What is it?\n"])
    assert question_text(record) == "What is it?"
    assert torch.equal(trained[0], served[0]) and torch.equal(trained[1], served[1])
