"""LoRA through `SafeLlava`'s doors: adapters written by ``PeftModel`` (stage 2 before `modeling/lora.py`) load
unchanged, ours are written in the same layout, the reference policy is the base, and nothing in the base is swapped."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from safety_modules import CheckpointError, SafeLlava

from ..conftest import random_image


def inputs(model: SafeLlava) -> dict[str, torch.Tensor]:
    prompt = "USER: <image>\nWhat is shown? ASSISTANT:"
    enc = model.processor(images=[random_image(30)], text=[prompt], return_tensors="pt")
    return {"input_ids": enc["input_ids"], "pixel_values": enc["pixel_values"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def logits(model: SafeLlava, batch) -> torch.Tensor:
    return model(**batch).logits


def test_adapters_written_by_peft_model_load_and_save_alike(tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    # An adapter as stage 2 wrote it before: PeftModel around the language model, saved by peft.
    old = SafeLlava.from_pretrained(tiny_dir, seed=0)
    batch = inputs(old)
    plain = logits(old, batch)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(old.language_model, config).save_pretrained(str(tmp_path / "peft"))
    adapted = logits(old, batch)  # peft injected the layers in place: this is the adapted model
    assert (adapted - plain).abs().max() > 1e-3

    model = SafeLlava.from_pretrained(tiny_dir, seed=0, lora=tmp_path / "peft")
    language_model = model.language_model
    assert model.has_lora and type(language_model).__name__ == "LlamaModel"  # injected, nothing swapped
    assert torch.equal(logits(model, batch), adapted)
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("safety."))
    with model.lora_disabled():
        assert torch.equal(logits(model, batch), plain)  # the reference policy is the base
    assert torch.equal(logits(model, batch), adapted)  # and the adapter is back after the block
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("safety."))

    saved = model.save_lora(tmp_path / "ours")
    theirs, ours = (
        load_file(str(tmp_path / "peft" / "adapter_model.safetensors")),
        load_file(str(saved / "adapter_model.safetensors")),
    )
    assert sorted(theirs) == sorted(ours) and all(torch.equal(theirs[k], ours[k]) for k in theirs)


def test_a_fresh_adapter_trains_only_itself_and_a_broken_one_is_named(tiny_dir, tmp_path):
    model = SafeLlava.from_pretrained(tiny_dir, seed=0)
    model.add_lora(r=4, alpha=8, dropout=0.0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("safety.")]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("vision_tower" in n or "lm_head" in n for n in trainable)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        model.add_lora(r=4, alpha=8, dropout=0.0)
    folder = model.save_lora(tmp_path / "adapter")

    with pytest.raises(CheckpointError, match="has no adapter_config.json"):
        SafeLlava.from_pretrained(tiny_dir, lora=tmp_path)
    (folder / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="adapter_model.safetensors is not a readable safetensors file"):
        SafeLlava.from_pretrained(tiny_dir, lora=folder)
