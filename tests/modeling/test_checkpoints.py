"""Saving and loading safety modules; base fingerprints; the original-LLaVA converter; the tiny model."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from safety_modules import CheckpointError, IncompatibleBaseError, SafeLlava, SafetyModules
from safety_modules.modeling.llava import load_base
from safety_modules.testing.tiny import make_tiny

from ..conftest import random_image


def test_save_load_round_trip_gives_identical_outputs(tiny_model, tiny_dir, tmp_path):
    images = [random_image(20), random_image(21)]
    expected = tiny_model.assess(images, prompts=["what is this?", "tell me"])
    tiny_model.safety.save_pretrained(tmp_path / "mods")
    assert sorted(p.name for p in (tmp_path / "mods").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    reloaded = SafeLlava.from_pretrained(tiny_dir, tmp_path / "mods")
    got = reloaded.assess(images, prompts=["what is this?", "tell me"])
    assert torch.equal(expected.level_logits, got.level_logits)
    assert torch.equal(expected.type_logits, got.type_logits)


def test_modules_refuse_another_base(tiny_model, tmp_path):
    tiny_model.safety.save_pretrained(tmp_path / "mods")
    other_dir = make_tiny(tmp_path / "other-base", seed=1)
    with pytest.raises(IncompatibleBaseError) as info:
        SafeLlava.from_pretrained(other_dir, tmp_path / "mods")
    message = str(info.value)
    theirs = SafetyModules.from_pretrained(tmp_path / "mods").config.base_fingerprint["projector_digest"]
    other = SafeLlava.from_pretrained(other_dir).config.base_fingerprint["projector_digest"]
    assert theirs != other and theirs in message and other in message


def test_fingerprint_does_not_depend_on_dtype(tiny_dir):
    fp32 = SafeLlava.from_pretrained(tiny_dir, dtype="fp32").config.base_fingerprint
    bf16 = SafeLlava.from_pretrained(tiny_dir, dtype="bf16").config.base_fingerprint
    assert fp32 == bf16


def test_missing_or_mismatched_tensor_is_a_clear_error(tiny_model, tmp_path):
    folder = tiny_model.safety.save_pretrained(tmp_path / "mods")
    state = load_file(str(folder / "model.safetensors"))
    del state["head_tokens"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing tensors: \\['head_tokens'\\]"):
        SafetyModules.from_pretrained(folder)
    state["head_tokens"] = torch.zeros(1, 3, 64)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="head_tokens: file \\(1, 3, 64\\) vs config \\(1, 64, 64\\)"):
        SafetyModules.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        SafetyModules.from_pretrained(folder)


def file_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_model_is_deterministic_and_loads_back(tmp_path, tiny_dir):
    again = make_tiny(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert file_digest(again / name) == file_digest(tiny_dir / name), name
    model, processor = load_base(again)
    assert model.config.vision_config.image_size == 336 and model.config.vision_config.patch_size == 14
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    enc = processor(images=[random_image(22)], text=["USER: <image>\nhi ASSISTANT:"], return_tensors="pt")
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 576
    text = "Héllo wörld, 123 ✓"
    assert processor.tokenizer.decode(processor.tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def write_original_twin(tiny_dir, out):
    """Write the tiny model in the original LLaVA layout; return its HF twin (vocab grown the same way)."""
    from transformers import CLIPVisionModel, LlavaForConditionalGeneration

    from safety_modules.testing.tiny import build_tokenizer, tiny_image_processor

    hf = LlavaForConditionalGeneration.from_pretrained(tiny_dir).eval()
    tokenizer = build_tokenizer(llava_tokens=False)
    base_vocab = len(tokenizer)
    grown = 64 * -(-(base_vocab + 2) // 64)
    # The converter grows embeddings to a multiple of 64 with mean rows; build the twin identically.
    for module in (hf.get_input_embeddings(), hf.lm_head):
        weight = module.weight.data[:base_vocab]
        module.weight = torch.nn.Parameter(
            torch.cat([weight, weight.mean(0, keepdim=True).expand(grown - base_vocab, -1)])
        )
    hf.config.text_config.vocab_size = grown

    tower_dir = out / "clip-tower"
    tower = CLIPVisionModel(hf.config.vision_config)
    tower.load_state_dict(hf.model.vision_tower.state_dict())
    tower.save_pretrained(tower_dir)
    tiny_image_processor().save_pretrained(tower_dir)

    ckpt = out / "llava-original"
    ckpt.mkdir()
    state = {}
    for key, value in hf.state_dict().items():
        if key.startswith("model.vision_tower."):
            continue  # the original checkpoint does not hold the vision tower
        if key.startswith("model.multi_modal_projector.linear_1."):
            key = "model.mm_projector.0." + key.rsplit(".", 1)[1]
        elif key.startswith("model.multi_modal_projector.linear_2."):
            key = "model.mm_projector.2." + key.rsplit(".", 1)[1]
        elif key.startswith("model.language_model."):
            key = "model." + key[len("model.language_model.") :]
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            value = value[:base_vocab]
        state[key] = value.contiguous()
    save_file(state, str(ckpt / "model.safetensors"))
    text = hf.config.text_config.to_dict()
    config = {
        k: text[k]
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "rms_norm_eps",
            "bos_token_id",
            "eos_token_id",
            "tie_word_embeddings",
        )
    }
    config.update(
        architectures=["LlavaLlamaForCausalLM"],
        model_type="llava",
        vocab_size=base_vocab,
        mm_vision_tower=str(tower_dir),
        mm_projector_type="mlp2x_gelu",
        mm_hidden_size=32,
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        image_aspect_ratio="pad",
    )
    (ckpt / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(ckpt)
    return hf, ckpt


def test_original_format_checkpoint_converts_to_the_hf_twin(tiny_dir, tmp_path):
    twin, ckpt = write_original_twin(tiny_dir, tmp_path)
    model, processor = load_base(ckpt)
    assert model.config.text_config.vocab_size == twin.config.text_config.vocab_size
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    _, hf_processor = load_base(tiny_dir)
    prompt = "USER: <image>\nWhat is shown in this image? ASSISTANT:"
    enc = processor(images=[random_image(23)], text=[prompt], return_tensors="pt")
    hf_enc = hf_processor(images=[random_image(23)], text=[prompt], return_tensors="pt")
    assert torch.equal(enc["input_ids"], hf_enc["input_ids"])
    # image_aspect_ratio "pad": the original checkpoint pads the 300x200 image, the HF base crops it.
    assert not torch.equal(enc["pixel_values"], hf_enc["pixel_values"])
    hf_enc["pixel_values"] = enc["pixel_values"]  # the weights' conversion is compared on the same pixels
    with torch.no_grad():
        got = model(**enc).logits
        expected = twin(**hf_enc).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # Modules made for the HF model attach to its converted twin (same fingerprint) and score alike.
    hf_model = SafeLlava.from_pretrained(tiny_dir, seed=0)
    converted = SafeLlava(model, hf_model.safety, processor)
    assert converted.config.base_fingerprint == hf_model.config.base_fingerprint
    image = [random_image(24, size=(336, 336))]  # square: padding and cropping agree
    torch.testing.assert_close(
        converted.assess(image, ["what?"]).level_logits,
        hf_model.assess(image, ["what?"]).level_logits,
        atol=1e-5,
        rtol=1e-5,
    )


def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_base(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' model, not a LLaVA"):
        load_base(tmp_path)
