"""With LLaMA's real vocabulary (rebuilt from the npm package ``llama-tokenizer-js@1.2.2``, see `real_llama`):
`llama_tokenizer` gives the package's own test vectors, and an original checkpoint's prompts and training
labels equal llava's (``tokenizer_image_token`` / ``preprocess_v1`` on the slow sentencepiece tokenizer)."""

from __future__ import annotations

import pytest

from safety_modules.modeling.llava import llama_tokenizer, load_base
from safety_modules.modeling.llava.conversation import (
    IGNORE_INDEX,
    IMAGE_TOKEN,
    chat_text,
    encode_conversation,
)
from tests.fidelity.oracle import (
    SlowLlamaTokenizer,
    build_original_checkpoint,
    llava_preprocess,
    llava_prompt,
)
from tests.fidelity.real_llama import (
    fetch_llama_tokenizer_js,
    js_test_vectors,
    rebuild_tokenizer_model,
)
from tests.fidelity.test_labels import RECORDS
from tests.fidelity.test_original_oracle import collapse_image_run


@pytest.fixture(scope="module")
def js_source(tmp_path_factory):
    return fetch_llama_tokenizer_js(tmp_path_factory.mktemp("npm"))


@pytest.fixture(scope="module")
def real_model_file(js_source, tmp_path_factory):
    return rebuild_tokenizer_model(js_source, tmp_path_factory.mktemp("llama") / "tokenizer.model")


def test_rebuilt_tokenizer_gives_the_packages_own_test_vectors(js_source, real_model_file):
    vectors = js_test_vectors(js_source)
    assert len(vectors) >= 10 and ("grabbed", [1, 2646, 1327, 287]) in vectors
    tokenizer = llama_tokenizer(real_model_file)
    slow = SlowLlamaTokenizer(real_model_file)
    for text, expected in vectors + [("Hello world", [1, 15043, 3186])]:
        assert slow.encode(text) == expected, text[:40]
        assert tokenizer(text).input_ids == expected, text[:40]


@pytest.fixture(scope="module")
def real_original(real_model_file, tmp_path_factory):
    return build_original_checkpoint(tmp_path_factory.mktemp("original-real"), model_file=real_model_file)


def test_original_checkpoint_with_the_real_tokenizer_prompts_like_llava(real_original):
    from llava.mm_utils import tokenizer_image_token

    _, processor = load_base(real_original)
    slow = SlowLlamaTokenizer(real_original / "tokenizer.model")
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    for question in ("What is shown?", "Which animal is it? A. cat B. dog", "Is it safe? Answer yes or no."):
        text = chat_text(processor, question)
        assert text == llava_prompt(question)
        ids = processor.tokenizer(text).input_ids
        assert collapse_image_run(ids, image_id) == tokenizer_image_token(text, slow)
        assert ids[:3] == [1, 319, 13563]  # "▁A", "▁chat": the first word keeps its "▁"
        after_image = ids[ids.index(image_id) + 1 :][:2]
        assert after_image == [29871, 13]  # "▁", "\n" after the image, as llava's chunking writes it
    assert processor.tokenizer("USER").input_ids == [1, 3148, 1001]


def test_original_checkpoint_with_the_real_tokenizer_labels_like_llava(real_original):
    processor = load_base(real_original)[1]
    slow = SlowLlamaTokenizer(real_original / "tokenizer.model")
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    for name, record in RECORDS.items():
        ids, labels = encode_conversation(processor, record, num_image_tokens=1)
        expected_ids, expected_labels = llava_preprocess(record, slow)
        assert collapse_image_run(ids.tolist(), image_id) == expected_ids, name
        got = [IGNORE_INDEX if t == image_id else lab for t, lab in zip(ids.tolist(), labels.tolist())]
        assert got == expected_labels, name
