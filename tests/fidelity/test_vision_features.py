"""`select_vision_features` computes LLaVA's selected layer without touching the tower, so one model can be
used from several threads at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from safety_modules.modeling.llava import select_vision_features, vision_encoder
from tests.conftest import random_image


@pytest.mark.parametrize("layer", [-2, -1, 0, 1, 3])
@pytest.mark.parametrize("strategy", ["default", "full"])
def test_selected_layer_is_bit_identical_to_the_towers_hidden_state(tiny_model, layer, strategy):
    tower = tiny_model.base.model.vision_tower
    pixels = tiny_model.pixel_values([random_image(1), random_image(2)])
    with torch.no_grad():
        expected = tower(pixels, output_hidden_states=True).hidden_states[layer]
        got = select_vision_features(tower, pixels, layer, strategy)
    assert torch.equal(got, expected[:, 1:] if strategy == "default" else expected)


def test_a_layer_the_tower_does_not_have_is_refused(tiny_model):
    tower = tiny_model.base.model.vision_tower
    with pytest.raises(ValueError, match="does not exist"):
        select_vision_features(tower, torch.zeros(1, 3, 336, 336), 7, "default")


def _attribute_ids(module: torch.nn.Module) -> dict[str, int]:
    """id() of every attribute of every submodule (children, parameters, buffers, plain attributes)."""
    ids = {}
    for name, sub in module.named_modules():
        for attr, value in vars(sub).items():
            ids[f"{name}.{attr}"] = id(value)
        for attr, value in {**sub._modules, **sub._parameters, **sub._buffers}.items():
            ids[f"{name}.{attr}"] = id(value)
    return ids


def test_no_attribute_of_the_tower_is_reassigned_during_a_call(tiny_model):
    tower = tiny_model.base.model.vision_tower
    layers = vision_encoder(tower).layers
    before = _attribute_ids(tower)
    during = []
    hook = layers[0].register_forward_hook(
        lambda *a: during.append((id(vision_encoder(tower).layers), len(vision_encoder(tower).layers)))
    )
    try:
        tiny_model.assess([random_image(3)], ["what is it?"])
    finally:
        hook.remove()
    assert during == [(id(layers), len(layers))]
    assert _attribute_ids(tower) == before


@pytest.mark.device_sensitive
def test_assess_from_four_threads_gives_the_sequential_results(tiny_model, tol):
    images = [[random_image(10 + i), random_image(20 + i)] for i in range(8)]
    prompts = [[f"what is in picture {i}?", "is it safe?"] for i in range(8)]
    sequential = [tiny_model.assess(im, pr) for im, pr in zip(images, prompts)]
    start = threading.Barrier(4)

    def job(i: int):
        if i < 4:
            start.wait()  # the first four really overlap
        return tiny_model.assess(images[i], prompts[i])

    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(job, range(8)))
    for seq, thr in zip(sequential, threaded):
        torch.testing.assert_close(thr.level_logits, seq.level_logits, **tol)
        torch.testing.assert_close(thr.type_logits, seq.type_logits, **tol)
