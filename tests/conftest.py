"""Shared fixtures: one tiny LLaVA folder per test session, a fresh SafeLlava on it, and the device options.

Tests run on CPU in float32 by default, also on a machine with CUDA: ``pytest_configure`` sets
``SAFEVLM_DEVICE=cpu`` (honoured by `backbone.resolve_device`, so CLI subprocesses follow too)
unless ``--device`` says otherwise. ``pytest --device cuda`` runs the suite on the GPU; tests
that compare numbers take their tolerances from the ``tol`` fixture (looser under bfloat16)
and are marked ``device_sensitive`` (``pytest --device cuda -m device_sensitive`` runs just them).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from safety_modules.modeling.llava import DEVICE_ENV
from safety_modules.testing.tiny import make_tiny


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default="cpu",
        help="device for the models built in tests: cpu (float32, the default) or cuda (bfloat16)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "device_sensitive: compares numbers; runs on the --device with `tol`")
    config.addinivalue_line("markers", "slow: takes more than ~20 s on 2 CPU cores")
    device = config.getoption("--device")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda given, but torch sees no CUDA device")
    os.environ[DEVICE_ENV] = device


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    """The device models are built on (``--device``, CPU by default)."""
    return torch.device(pytestconfig.getoption("--device"))


@pytest.fixture(scope="session")
def dtype(device) -> torch.dtype:
    """float32 on CPU, bfloat16 on CUDA (what the library picks there by default)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@pytest.fixture(scope="session")
def tol(dtype) -> dict[str, float]:
    """``torch.testing.assert_close``-style tolerances for comparisons at ``dtype``."""
    if dtype == torch.bfloat16:
        return {"atol": 3e-2, "rtol": 3e-2}
    return {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny LLaVA-1.5 folder (real 336 px / 576-token geometry), written once per session."""
    return make_tiny(tmp_path_factory.mktemp("tiny-llava"), seed=0)


@pytest.fixture()
def tiny_model(tiny_dir, device, dtype):
    """A fresh SafeLlava (seeded modules) on the tiny base; cheap enough to build per test."""
    from safety_modules import SafeLlava

    return SafeLlava.from_pretrained(tiny_dir, seed=0, device=device, dtype=dtype)


@pytest.fixture(scope="session")
def photos():
    """Real photos shipped by scikit-image (no download)."""
    from skimage import data

    return [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


def random_image(seed: int, size=(300, 200)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (selenium) for the session's page tests; skips, saying why, where it is missing."""
    from safety_modules.testing.browser import MISSING, find_chromium, start_chromium

    if find_chromium() is None:
        pytest.skip(MISSING)
    pytest.importorskip("selenium.webdriver")
    driver = start_chromium()
    yield driver
    driver.quit()
