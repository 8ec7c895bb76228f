"""The prompt-token limit (`gate.limits`) and conversations with a system turn, on the tiny model."""

from __future__ import annotations

import pytest

from safety_modules.gate import Gate
from safety_modules.gate.limits import PromptTooLong, check_prompt_tokens, context_length
from safety_modules.modeling.llava.conversation import VICUNA_V1, chat_text, conversation_format, render


def test_check_prompt_tokens_counts_and_names_count_and_limit(tiny_model):
    tok = tiny_model.processor.tokenizer
    n = len(tok("a b c")["input_ids"])
    assert check_prompt_tokens(tok, ["a b c"], n) == [n]
    assert check_prompt_tokens(tok, ["a b c"], n + 10, extra=10) == [n + 10]
    with pytest.raises(PromptTooLong, match=f"{n} tokens; the prompt limit is {n - 1} tokens") as err:
        check_prompt_tokens(tok, ["a", "a b c"], n - 1)
    assert (err.value.index, err.value.count, err.value.limit) == (1, n, n - 1)
    # A text that no tokenisation fits in the limit is refused by its length alone.
    with pytest.raises(PromptTooLong, match="more than 10 tokens") as err:
        check_prompt_tokens(tok, ["x" * 10_000_000], 10)
    assert not err.value.exact
    assert check_prompt_tokens(tok, ["x" * 5000], None)[0] > 10  # None: count only


def test_the_gate_refuses_long_prompts_before_any_model_work_and_reports_its_count(tiny_model, photos):
    gate = Gate(tiny_model)
    assert gate.max_prompt_tokens == context_length(tiny_model.base.config) == 2048
    with pytest.raises(PromptTooLong):
        gate.generate([photos[0]], ["the " * 3000], max_new_tokens=2)
    with pytest.raises(PromptTooLong):
        gate.decide([photos[0]], ["the " * 3000])
    answer = gate.generate([photos[0]], ["What is it?"], do_sample=False, max_new_tokens=2)[0]
    embeds, mask = tiny_model.prompt_embeds(tiny_model.encode_images([photos[0]]), ["What is it?"])
    assert answer.prompt_tokens == int(mask.sum())  # exactly the language model's input length
    small = Gate(tiny_model, max_prompt_tokens=answer.prompt_tokens - 1)
    with pytest.raises(PromptTooLong, match=f"{answer.prompt_tokens} tokens"):
        small.generate([photos[0]], ["What is it?"], max_new_tokens=2)


def test_a_system_turn_renders_as_the_chat_template_writes_a_system_message(tiny_model):
    processor = tiny_model.processor
    turns = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hello"},
        {"from": "gpt", "value": "Hi."},
        {"from": "human", "value": "What is it?"},
    ]
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hello"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is it?"}]},
    ]
    for template in (processor.chat_template, VICUNA_V1.chat_template()):
        processor.chat_template = template
        want = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        got = render(conversation_format(processor), turns, processor.tokenizer.eos_token, True).text
        assert got == want == chat_text(processor, turns)
        assert got.startswith("Be brief. USER: <image>\nHello ASSISTANT: Hi.")


def test_the_vocabulary_is_walked_once_per_tokenizer_not_per_request(tiny_model):
    from safety_modules.gate.limits import longest_token_chars

    tok = tiny_model.processor.tokenizer
    walks = []
    real = tok.get_vocab
    tok.get_vocab = lambda: walks.append(1) or real()  # a spy on the real vocabulary, for this tokenizer only
    try:
        for _ in range(5):
            check_prompt_tokens(tok, ["what is in this picture?"], 100)
    finally:
        del tok.get_vocab
    assert len(walks) <= 1
    assert longest_token_chars(tok) == max(len(t) for t in tok.get_vocab())
