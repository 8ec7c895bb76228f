"""An original-format checkpoint built and saved by llava's own classes, loaded through `load_base`, behaves
as llava's code: same prompt, same token ids, same padded pixels, same logits, from the same raw image and
question, each side through its own preprocessing and prompt building."""

from __future__ import annotations

import pytest
import torch

from safety_modules.modeling.llava import load_base
from safety_modules.modeling.llava.conversation import IMAGE_TOKEN, chat_text
from tests.conftest import random_image
from tests.fidelity.oracle import (
    SlowLlamaTokenizer,
    build_original_checkpoint,
    llava_model,
    llava_prompt,
)

IMAGE_TOKEN_INDEX = -200  # llava's placeholder id for the image in its token ids


@pytest.fixture(scope="module")
def original(tmp_path_factory, device, dtype):
    """(checkpoint folder, llava's model on the test device and dtype, its image processor, its tokenizer)."""
    ckpt = build_original_checkpoint(tmp_path_factory.mktemp("original"))
    model, image_processor = llava_model(ckpt)
    model.to(device=device, dtype=dtype)
    return ckpt, model, image_processor, SlowLlamaTokenizer(ckpt / "tokenizer.model")


def collapse_image_run(ids: list[int], image_id: int) -> list[int]:
    """Our ids with the run of image tokens written as llava's single -200 placeholder."""
    out: list[int] = []
    for token in ids:
        if token == image_id:
            if not out or out[-1] != IMAGE_TOKEN_INDEX:
                out.append(IMAGE_TOKEN_INDEX)
        else:
            out.append(token)
    return out


@pytest.mark.device_sensitive
@pytest.mark.parametrize("size", [(300, 200), (180, 320)])  # wide and tall: the padding really happens
def test_logits_equal_llavas_from_the_same_image_and_question(original, size, device, dtype, tol):
    from llava.mm_utils import process_images, tokenizer_image_token

    ckpt, llava, image_processor, slow = original
    image, question = random_image(7, size=size), "Which animal is it? A. cat B. dog"

    ids = tokenizer_image_token(llava_prompt(question), slow, return_tensors="pt").unsqueeze(0)
    pixels = process_images([image], image_processor, llava.config)
    with torch.no_grad():
        expected = llava(input_ids=ids.to(device), images=pixels.to(device, dtype)).logits.float().cpu()

    model, processor = load_base(ckpt, device=device, dtype=dtype)
    text = chat_text(processor, question)
    assert text == llava_prompt(question)  # vicuna_v1 with its system prompt
    enc = processor(images=[image], text=[text], return_tensors="pt").to(device)
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert collapse_image_run(enc["input_ids"][0].tolist(), image_id) == ids[0].tolist()
    torch.testing.assert_close(enc["pixel_values"].cpu().float(), pixels, atol=0, rtol=0)  # expand2square
    with torch.no_grad():
        got = model(**enc).logits.float().cpu()
    vocab = expected.shape[-1]  # ours has <image>, <pad> and rows up to a multiple of 64 on top
    assert got.shape[:2] == expected.shape[:2]
    torch.testing.assert_close(got[..., :vocab], expected, **tol)


@pytest.mark.parametrize(
    "text",
    [
        "USER: <image>\nWhat is shown?",  # the first word keeps its "▁" (3148, 1001 in LLaMA, not 11889)
        "A chat between a curious user. USER: <image>\nIs there a dog? Answer yes or no. ASSISTANT:",
        "USER: <image>\n  two  spaces\n\nand lines ASSISTANT: 12 birds</s>USER: and 3? ASSISTANT: yes</s>",
        "USER: <image>\nnon-ASCII: héllo ✓ 日本 ASSISTANT:",
        "<image>\nWhich animal is it? A. cat B. dog",
    ],
)
def test_tokenizer_from_tokenizer_model_gives_llavas_ids(original, text):
    from llava.mm_utils import tokenizer_image_token

    ckpt, _, _, slow = original
    _, processor = load_base(ckpt)
    tokenizer = processor.tokenizer
    assert (ckpt / "tokenizer.model").is_file() and not (ckpt / "tokenizer.json").exists()
    expected = tokenizer_image_token(text, slow)  # llava's chunking around <image>, sentencepiece per chunk
    got = collapse_image_run(tokenizer(text).input_ids, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    assert got == expected
    plain = text.replace(IMAGE_TOKEN, "").split("</s>")[0]  # after a special token a "▁" is prepended
    assert tokenizer.decode(tokenizer(plain).input_ids, skip_special_tokens=True) == plain
