"""Safety modules at tiny and at real LLaVA-1.5 geometry; SafeLlava forward/assess behaviour."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlavaConfig

from safety_modules import SafeLlava, SafetyConfig, SafetyModules
from safety_modules.taxonomy import Taxonomy
from safety_modules.testing.tiny import LLAVA_7B_VISION, clip_config

from ..conftest import random_image


def llava_geometry(text_hidden: int, text_heads: int) -> LlavaConfig:
    return LlavaConfig(
        vision_config=clip_config(**LLAVA_7B_VISION),
        text_config=LlamaConfig(hidden_size=text_hidden, num_attention_heads=text_heads),
    )


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_reference_geometry_7b_on_meta():
    config = SafetyConfig.from_llava_config(llava_geometry(4096, 32))
    assert (config.vision_hidden_size, config.text_hidden_size, config.num_image_tokens) == (1024, 4096, 576)
    assert config.projector_hidden_size == 1088
    with torch.device("meta"):
        modules = SafetyModules(config)
    assert abs(n_params(modules.projector) - 40.1e6) / 40.1e6 < 0.10
    assert abs(n_params(modules.head) - 67e6) / 67e6 < 0.15
    assert modules.head_tokens.shape == (1, 64, 4096)
    assert modules.llm_tokens.shape == (1, 64, 4096)


def test_reference_geometry_13b_builds_on_meta():
    config = SafetyConfig.from_llava_config(llava_geometry(5120, 40))
    with torch.device("meta"):
        modules = SafetyModules(config)
    features = torch.empty(2, 576, 1024, device="meta")
    scores = modules.score(features)
    assert scores.level_logits.shape == (2, 4) and scores.type_logits.shape == (2, 7)
    assert modules.llm_tokens.shape == (1, 64, 5120)


def test_config_round_trip_and_errors(tmp_path):
    config = SafetyConfig(level_names=["ok", "bad"], type_names=["a", "safe"], num_head_tokens=4)
    config.save(tmp_path / "config.json")
    assert SafetyConfig.load(tmp_path / "config.json") == config
    with pytest.raises(ValueError, match="unknown keys.*bogus"):
        SafetyConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="safe type"):
        SafetyConfig(type_names=["a", "b"])
    with pytest.raises(ValueError, match="not divisible"):
        SafetyConfig(text_hidden_size=100, head_num_heads=8)
    with pytest.raises(KeyError, match="known types"):
        Taxonomy().type_id("nope")


def test_custom_taxonomy_sizes_the_head(tiny_dir):
    model = SafeLlava.from_pretrained(
        tiny_dir, seed=0, level_names=["ok", "risky"], type_names=[f"c{i}" for i in range(9)] + ["safe"]
    )
    scores = model.assess([random_image(0)])
    assert scores.level_probs.shape == (1, 2) and scores.type_probs.shape == (1, 10)


@pytest.mark.device_sensitive
def test_forward_shapes_and_dtypes(tiny_model, dtype):
    proc = tiny_model.processor
    texts = [
        proc.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}], add_generation_prompt=True
        )
        for q in ("what?", "describe this picture in detail")
    ]
    enc = proc(images=[random_image(1), random_image(2)], text=texts, return_tensors="pt", padding=True)
    out = tiny_model(enc["input_ids"], enc["pixel_values"], enc["attention_mask"])
    n_llm = tiny_model.config.num_llm_tokens
    assert out.logits.shape == (2, enc["input_ids"].shape[1] + n_llm, tiny_model.base.config.text_config.vocab_size)
    assert out.level_logits.shape == (2, 4) and out.type_logits.shape == (2, 7)
    assert out.logits.dtype == dtype and out.level_logits.dtype == dtype  # the base's dtype (fp32 on CPU)
    assert out.attention_mask.shape == out.logits.shape[:2]
    assert out.loss is None


@pytest.mark.device_sensitive
def test_bfloat16_modules_follow_the_base(tiny_dir, device):
    model = SafeLlava.from_pretrained(tiny_dir, seed=0, dtype="bf16", device=device)
    assert model.dtype == torch.bfloat16 and model.safety.dtype == torch.bfloat16
    scores = model.assess([random_image(3)])
    assert scores.level_logits.dtype == torch.bfloat16
    assert scores.level_probs.dtype == torch.float32
    torch.testing.assert_close(scores.level_probs.sum(-1).cpu(), torch.ones(1))


def test_assess_with_and_without_prompts(tiny_model):
    images = [random_image(4), random_image(5)]
    plain = tiny_model.assess(images)
    prompted = tiny_model.assess(images, prompts=["How do I pick this lock?", "hi"])
    assert plain.level_probs.shape == prompted.level_probs.shape == (2, 4)
    # The head really sees the prompt: the scores change with it.
    assert not torch.allclose(plain.level_logits, prompted.level_logits)
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        tiny_model.assess(images[:1], prompts=["a", "b"])


@pytest.mark.device_sensitive
def test_prompt_padding_does_not_change_scores(tiny_model, tol):
    images = [random_image(6), random_image(7), random_image(8)]
    prompts = ["short", "a much longer prompt that forces the other rows to be padded quite a bit", ""]
    batch = tiny_model.assess(images, prompts)
    for i in range(3):
        alone = tiny_model.assess(images[i : i + 1], prompts[i : i + 1])
        torch.testing.assert_close(batch.level_logits[i : i + 1], alone.level_logits, **tol)
        torch.testing.assert_close(batch.type_logits[i : i + 1], alone.type_logits, **tol)


def test_vision_tower_runs_once_per_forward_and_assess(tiny_model):
    calls = []
    # The embeddings run once per vision pass (select_vision_features calls the layers it needs itself).
    tiny_model.base.model.vision_tower.embeddings.register_forward_hook(lambda *a: calls.append(1))
    proc = tiny_model.processor
    enc = proc(
        images=[random_image(9), random_image(10)],
        text=["USER: <image>\nhi ASSISTANT:"] * 2,
        return_tensors="pt",
        padding=True,
    )
    tiny_model(enc["input_ids"], enc["pixel_values"], enc["attention_mask"])
    assert len(calls) == 1
    tiny_model.assess([random_image(11), random_image(12)], prompts=["a", "b"])
    assert len(calls) == 2


def test_backward_touches_only_safety_modules(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.base.state_dict().items()}
    proc = tiny_model.processor
    texts = [
        proc.apply_chat_template(
            [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
            ]
        )
    ] * 2
    enc = proc(images=[random_image(13), random_image(14)], text=texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].clone()
    tiny_model.train()
    assert not tiny_model.base.training
    optimizer = torch.optim.AdamW([p for p in tiny_model.parameters() if p.requires_grad], lr=1e-2)
    out = tiny_model(
        enc["input_ids"],
        enc["pixel_values"],
        enc["attention_mask"],
        labels=labels,
        safety_levels=torch.tensor([0, 3]),
        safety_types=torch.tensor([6, 1]),
    )
    assert out.lm_loss is not None and out.safety_loss is not None
    torch.testing.assert_close(out.loss, out.lm_loss + 10.0 * out.safety_loss)
    out.loss.backward()
    optimizer.step()
    with_grad = {n for n, p in tiny_model.named_parameters() if p.grad is not None}
    assert with_grad and all(n.startswith("safety.") for n in with_grad)
    # Safety tokens B get gradient through the LM loss, tokens A and the projector through the head.
    assert {"safety.llm_tokens", "safety.head_tokens"} <= with_grad
    after = tiny_model.base.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_folded_head_attention_equals_multihead_attention():
    from safety_modules.modeling import SafetyHead

    torch.manual_seed(0)
    head = SafetyHead(width=64, num_heads=8, num_levels=4, num_types=7).double()
    for p in head.parameters():  # non-trivial biases, so the folding is really exercised
        torch.nn.init.normal_(p, std=0.3)
    kv = torch.randn(3, 20, 64, dtype=torch.double)
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[1, 15:] = True
    mask[2, 5:] = True
    reference, _ = head.attention(head.query.expand(3, -1, -1), kv, kv, key_padding_mask=mask, need_weights=False)
    torch.testing.assert_close(head.pool(kv, mask), reference[:, 0], atol=1e-10, rtol=1e-10)


@pytest.mark.device_sensitive
def test_vision_features_skip_unused_layers_and_match_the_full_tower(tiny_model, tol):
    pixels = tiny_model.pixel_values([random_image(30), random_image(31)])
    tower = tiny_model.base.model.vision_tower
    ran = []
    hooks = [layer.register_forward_hook(lambda *a: ran.append(1)) for layer in tower.encoder.layers]
    features = tiny_model.vision_features(pixels)
    for hook in hooks:
        hook.remove()
    n_layers = len(tower.encoder.layers)
    assert len(ran) == n_layers - 1  # layer -2 is read: the last layer never runs
    full = tower(pixels.to(tiny_model.device, tiny_model.dtype), output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(features, full, **tol)
    assert len(tower.encoder.layers) == n_layers  # the tower is left as it was


@pytest.mark.device_sensitive
def test_identical_images_in_a_batch_take_one_vision_pass(tiny_model, tol):
    a, b = random_image(40), random_image(41)
    seen = []
    hook = tiny_model.base.model.vision_tower.embeddings.register_forward_hook(
        lambda mod, args, out: seen.append(args[0].shape[0])
    )
    # the same object twice and an equal copy: both are recognised by content
    scores = tiny_model.assess([a, b, a, a.copy(), b])
    features = tiny_model.encode_images([a, b, a, a.copy(), b])
    assert seen == [2, 2]  # one call each, two distinct images
    # pixel values given directly: every row runs unless the caller groups them
    pixels = tiny_model.pixel_values([a, b, a])
    tiny_model.vision_features(pixels)
    tiny_model.vision_features(pixels, groups=[0, 1, 0])
    hook.remove()
    assert seen[2:] == [3, 2]
    alone = tiny_model.encode_images([b])
    for row in (1, 4):
        torch.testing.assert_close(features[row], alone[0], **tol)
    torch.testing.assert_close(features[0], features[3], atol=0, rtol=0)
    torch.testing.assert_close(scores.level_logits[1], tiny_model.assess([b]).level_logits[0], **tol)
    with pytest.raises(ValueError, match="2 group labels for 3 images"):
        tiny_model.vision_features(pixels, groups=[0, 1])
