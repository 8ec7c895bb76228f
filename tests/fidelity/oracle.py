"""The original LLaVA code as a test oracle: a tiny original-format checkpoint built by llava's own classes,
a LLaMA-style sentencepiece ``tokenizer.model`` trained at test time, and llava's slow-tokenizer behaviour.

``llava`` is PyPI ``llava-torch==1.2.2.post1`` installed with ``--no-deps`` (the Makefile does it);
its model classes, ``mm_utils`` and ``conversation`` import next to transformers 5. Its training
module imports ``LLaVATrainer``, which needs a transformers-4 symbol; `llava_preprocess` puts an
empty stand-in for that one module (the trainer class is never used) so the real ``preprocess_v1``
and ``preprocess_multimodal`` can run.
"""

from __future__ import annotations

import copy
import io
import re
import shutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

llava = pytest.importorskip("llava", reason="the original LLaVA code (pip install --no-deps llava-torch==1.2.2.post1)")
spm = pytest.importorskip("sentencepiece", reason="sentencepiece reads tokenizer.model")

# LLaMA-like text: the system prompt, role markers, questions with answers inside them, digits, bytes.
CORPUS = """A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, \
detailed, and polite answers to the user's questions.
USER: What is shown in this image? ASSISTANT: The image shows a person standing in a street.
USER: Describe the picture in detail. ASSISTANT: A cat is sitting on a wooden table next to a cup of coffee.
USER: Which animal is it? A. cat B. dog C. horse Answer with the option's letter from the given choices directly.
USER: Is there a dog in the picture? Answer yes or no. ASSISTANT: yes
USER: How many people are there? ASSISTANT: There are 3 people and 12 birds in 2024.
I'm sorry, but I can't help with that request. This image may contain risks of privacy.
Safe Hint: answer with caution. Please handle and respond cautiously and provide positive guidance.
"""


def train_llama_sentencepiece(path: Path, vocab_size: int = 600) -> Path:
    """A BPE ``tokenizer.model`` with LLaMA's settings (byte fallback, split digits, dummy prefix,
    no whitespace folding, identity normalisation; unk/bos/eos = 0/1/2), trained on `CORPUS`."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines() * 8),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


class SlowLlamaTokenizer:
    """LLaMA's slow tokenizer as llava used it (transformers 4, ``LlamaTokenizer(legacy=True)``):
    special tokens are split out of the text, every other piece is ``sentencepiece.encode``d as is
    (each piece gets sentencepiece's dummy prefix), BOS first. Only what llava's code calls."""

    legacy = True
    model_max_length = 4096

    def __init__(self, model_file: Path) -> None:
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.bos_token_id, self.eos_token_id = self.sp.bos_id(), self.sp.eos_id()
        self.pad_token_id = self.sp.unk_id()  # llava sets pad = unk for vicuna_v1
        self.specials = {self.sp.id_to_piece(i): i for i in (self.sp.unk_id(), self.bos_token_id, self.eos_token_id)}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in self.specials) + ")")

    def encode(self, text: str) -> list[int]:
        ids = [self.bos_token_id]
        for piece in self._split.split(text):
            if piece in self.specials:
                ids.append(self.specials[piece])
            elif piece:
                ids.extend(self.sp.encode(piece))
        return ids

    def __call__(self, text: str, **_: Any) -> Any:
        return types.SimpleNamespace(input_ids=self.encode(text))


def build_original_checkpoint(root: Path, seed: int = 0, model_file: Path | None = None) -> Path:
    """An original-layout LLaVA-1.5 folder written by llava's ``LlavaLlamaForCausalLM``: a tiny CLIP tower
    folder (real 336 px / patch 14 geometry) named by ``mm_vision_tower``, ``tokenizer.model`` only,
    ``image_aspect_ratio: pad``; the tower's weights are not in the checkpoint (as in liuhaotian's).
    ``model_file``: a ``tokenizer.model`` to ship (default: one trained on `CORPUS`)."""
    from llava.model.language_model.llava_llama import (
        LlavaConfig,
        LlavaLlamaForCausalLM,
    )
    from transformers import CLIPVisionModel

    from safety_modules.testing.tiny import TINY_TEXT, TINY_VISION, clip_config, tiny_image_processor

    torch.manual_seed(seed)
    tower_dir = root / "clip-vit-tiny-336"
    vision = clip_config(**TINY_VISION)
    CLIPVisionModel(vision).save_pretrained(tower_dir)
    tiny_image_processor().save_pretrained(tower_dir)

    ckpt = root / "llava-v1.5-tiny"
    if model_file is None:
        model_file = train_llama_sentencepiece(ckpt / "tokenizer.model")
    else:
        ckpt.mkdir(parents=True, exist_ok=True)
        model_file = Path(shutil.copyfile(model_file, ckpt / "tokenizer.model"))
    vocab = spm.SentencePieceProcessor(model_file=str(model_file)).get_piece_size()
    config = LlavaConfig(
        vocab_size=vocab,
        **TINY_TEXT,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        architectures=["LlavaLlamaForCausalLM"],
        mm_vision_tower=str(tower_dir),
        mm_hidden_size=32,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        image_aspect_ratio="pad",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        mm_patch_merge_type="flat",
    )
    model = LlavaLlamaForCausalLM(config).eval()
    for p in model.parameters():  # visible logits: random weights larger than the 0.02 default
        torch.nn.init.normal_(p, std=0.2)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("model.vision_tower.")}
    model.save_pretrained(ckpt, state_dict=state)
    return ckpt


def llava_model(ckpt: Path):
    """The checkpoint loaded the way llava's builder does it: the model class, then the tower's ``load_model``."""
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    model = LlavaLlamaForCausalLM.from_pretrained(ckpt).eval()
    tower = model.get_vision_tower()
    if not tower.is_loaded:
        tower.load_model()
    return model, tower.image_processor


def llava_prompt(question: str) -> str:
    """llava's own inference prompt: ``conv_templates['vicuna_v1']`` with ``<image>\\n`` before the question."""
    from llava.constants import DEFAULT_IMAGE_TOKEN
    from llava.conversation import conv_templates

    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


@dataclass
class _DataArgs:
    is_multimodal: bool = True
    mm_use_im_start_end: bool = False


def llava_preprocess(turns: list[dict[str, str]], tokenizer: SlowLlamaTokenizer) -> tuple[list[int], list[int]]:
    """llava's training preprocessing (``preprocess_multimodal`` + ``preprocess_v1``): ids (-200 for the image)
    and labels (-100 where masked) of one record."""
    if "llava.train.llava_trainer" not in sys.modules:
        stand_in = types.ModuleType("llava.train.llava_trainer")
        stand_in.LLaVATrainer = object  # never used by the preprocessing functions
        sys.modules["llava.train.llava_trainer"] = stand_in
    from llava import conversation as conversation_lib
    from llava.train.train import preprocess_multimodal, preprocess_v1

    conversation_lib.default_conversation = conversation_lib.conv_templates["vicuna_v1"]
    sources = preprocess_multimodal([copy.deepcopy(turns)], _DataArgs())
    out = preprocess_v1(sources, tokenizer, has_image=True)
    return out["input_ids"][0].tolist(), out["labels"][0].tolist()
