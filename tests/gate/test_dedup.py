"""Identical images take one preprocessing and one vision pass, decided by a content hash, never a sort of pixels."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from safety_modules import Gate, SafetyPolicy
from safety_modules.images import group_identical, group_labels

from ..conftest import random_image

SORTS = [
    (torch, "unique"),
    (torch, "unique_consecutive"),
    (torch, "sort"),
    (torch, "argsort"),
    (torch, "msort"),
    (torch.Tensor, "unique"),
    (torch.Tensor, "unique_consecutive"),
    (torch.Tensor, "sort"),
    (torch.Tensor, "argsort"),
]


class Calls:
    """Counts calls of wrapped functions (installed with monkeypatch, so they are restored after the test)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def wrap(self, monkeypatch, owner, name: str) -> None:
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            self.names.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


@pytest.fixture()
def tower_rows(tiny_model):
    """Rows that reach the real vision tower, one entry per call."""
    rows: list[int] = []
    hook = tiny_model.vision_tower.embeddings.register_forward_hook(lambda m, args, out: rows.append(len(args[0])))
    yield rows
    hook.remove()


@pytest.fixture()
def preprocessed(tiny_model, monkeypatch):
    """Images handed to the image processor, one entry per call."""
    counts: list[int] = []
    processor = tiny_model.processor.image_processor
    original = processor.preprocess

    def counting(images, *args, **kwargs):
        counts.append(len(images) if isinstance(images, (list, tuple)) else 1)
        return original(images, *args, **kwargs)

    monkeypatch.setattr(processor, "preprocess", counting)
    return counts


@pytest.mark.device_sensitive
def test_repeated_images_take_one_pass_each_and_no_sort_over_pixels(
    tiny_model, tower_rows, preprocessed, monkeypatch, tol
):
    a, b, c = random_image(1), random_image(2), random_image(3, size=(200, 300))
    batch = [a, b, a.copy(), c, a, b]  # a three times (one an equal copy), b twice
    prompts = [f"question {i}" for i in range(len(batch))]
    sorts = Calls()
    for owner, name in SORTS:
        sorts.wrap(monkeypatch, owner, name)
    gate = Gate(tiny_model, SafetyPolicy.allow_all())
    answers = gate.generate(batch, prompts, do_sample=False, max_new_tokens=2)
    scores = gate.score(batch, prompts)
    assert sorts.names == []  # nothing was sorted, not pixels, not anything else
    assert tower_rows == [3, 3]  # one call each, one row per distinct image
    assert preprocessed == [3, 3]  # duplicates are preprocessed once too
    monkeypatch.undo()

    # Each sample's score equals the one it gets alone.
    for i in range(len(batch)):
        alone = gate.score([batch[i]], [prompts[i]])
        torch.testing.assert_close(scores.level_logits[i], alone.level_logits[0], **tol)
        torch.testing.assert_close(scores.type_logits[i], alone.type_logits[0], **tol)
        assert answers[i].decision.type_probs == pytest.approx(
            dict(zip(tiny_model.config.taxonomy.types, alone.type_probs[0].tolist())), abs=tol["atol"] * 10
        )
    features = tiny_model.encode_images(batch)
    for i, image in enumerate(batch):
        torch.testing.assert_close(features[i], tiny_model.encode_images([image])[0], **tol)


def test_pixel_tensors_are_grouped_only_by_the_caller(tiny_model, tower_rows):
    a, b = random_image(4), random_image(5)
    pixels = tiny_model.pixel_values([a, b, a, a])
    gate = Gate(tiny_model)
    gate.decide(pixels, ["x"] * 4)
    gate.decide(pixels, ["x"] * 4, groups=[7, 3, 7, 7])
    gate.decide(pixels, ["x"] * 4, groups=torch.tensor([0, 1, 0, 0]))
    assert tower_rows == [4, 2, 2]
    with pytest.raises(ValueError, match="3 group labels for 4 images"):
        gate.decide(pixels, ["x"] * 4, groups=[0, 1, 0])


@pytest.mark.device_sensitive
def test_uint8_image_tensors_are_preprocessed_like_pil_images(tiny_model, preprocessed, tower_rows, tol):
    images = [random_image(6), random_image(7)]
    raw = torch.from_numpy(np.stack([np.asarray(img) for img in images]))  # (B, H, W, 3) uint8
    gate = Gate(tiny_model)
    from_tensor = gate.score(raw, ["a", "b"])
    from_pil = gate.score(images, ["a", "b"])
    torch.testing.assert_close(from_tensor.level_logits, from_pil.level_logits, **tol)
    # grouped by the caller: the repeated row is neither preprocessed nor run twice
    repeated = gate.score(raw[[0, 1, 0]], ["a", "b", "a"], groups=[0, 1, 0])
    assert preprocessed == [2, 2, 2] and tower_rows == [2, 2, 2]
    torch.testing.assert_close(repeated.level_logits[2], from_pil.level_logits[0], **tol)


def test_grouping_by_content(monkeypatch):
    digests = Calls()
    digests.wrap(monkeypatch, hashlib, "blake2b")
    a = random_image(8)
    one_pixel_off = a.copy()
    one_pixel_off.putpixel((0, 0), tuple(255 - v for v in a.getpixel((0, 0))))
    same_bytes_other_size = Image.frombytes("RGB", (200, 300), a.tobytes())
    same_bytes_other_mode = Image.frombytes("RGBA", (150, 200), a.tobytes())
    array = np.asarray(a)
    images = [a, a.copy(), one_pixel_off, same_bytes_other_size, same_bytes_other_mode, a, array, array.copy()]
    assert group_identical(images) == ([0, 2, 3, 4, 6], [0, 0, 1, 2, 3, 0, 4, 4])
    # hashed: a (once, though given twice), its copy, the one-pixel change, the two arrays
    assert len(digests.names) == 5

    digests.names.clear()
    assert group_identical([a]) == ([0], [0])
    assert group_identical([a, same_bytes_other_size, random_image(9, size=(64, 64))]) == ([0, 1, 2], [0, 1, 2])
    assert digests.names == []  # nothing could be equal: nothing hashed
    assert group_identical(["not an image", "not an image"]) == ([0, 1], [0, 1])  # unknown kinds never merge
    assert group_labels(["b", "a", "b", "c", "a"]) == ([0, 1, 3], [0, 1, 0, 2, 1])
