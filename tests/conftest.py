"""Shared fixtures: one tiny LLaVA folder per test session, and a fresh SafeLlava on it."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from safety_modules.tiny import make_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny LLaVA-1.5 folder (real 336 px / 576-token geometry), written once per session."""
    return make_tiny(tmp_path_factory.mktemp("tiny-llava"), seed=0)


@pytest.fixture()
def tiny_model(tiny_dir):
    """A fresh SafeLlava (seeded modules) on the tiny base; cheap enough to build per test."""
    from safety_modules import SafeLlava

    return SafeLlava.from_pretrained(tiny_dir, seed=0)


@pytest.fixture(scope="session")
def photos():
    """Real photos shipped by scikit-image (no download)."""
    from skimage import data

    return [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


def random_image(seed: int, size=(300, 200)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
