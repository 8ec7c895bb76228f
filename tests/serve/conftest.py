"""One tiny base, sharpened modules and a splitting policy per session; one local server shared by the tests."""

from __future__ import annotations

import pytest

from safety_modules import SafeLlava, SafetyPolicy

from .assets import build_assets, start_server, stop_server

API_KEY = "test-key-123"
SERVE_PACKAGES = ("fastapi", "uvicorn", "prometheus_client", "httpx", "openai")


def require_serve_packages() -> None:
    """Skip (with the reason) where the [serve] extra or the openai client is not installed."""
    for name in SERVE_PACKAGES:
        pytest.importorskip(name, reason="the server tests need the [serve] extra and openai ([dev])")


@pytest.fixture(scope="session")
def assets(tiny_dir, photos, tmp_path_factory):
    return build_assets(tiny_dir, tmp_path_factory.mktemp("serve-assets"), photos)


@pytest.fixture(scope="session")
def direct(assets, device, dtype):
    """The same model and policy in this process, on the device the server uses: what it must agree with."""
    model = SafeLlava.from_pretrained(assets.base, assets.safety, device=device, dtype=dtype)
    return model, SafetyPolicy.from_yaml(assets.policy, model.config.taxonomy)


@pytest.fixture(scope="session")
def server(assets, tmp_path_factory):
    """A real `safevlm serve` on 127.0.0.1 (bearer token required); yields its base URL."""
    folder = tmp_path_factory.mktemp("serve-local")
    key_file = folder / "key.txt"
    key_file.write_text(API_KEY + "\n")
    proc, url = start_server(
        [
            *assets.serve_args(),
            "--api-key-file",
            str(key_file),
            "--max-batch",
            "16",
            "--max-wait-ms",
            "20",
            "--max-body-mb",
            "2",
        ],
        folder / "server.log",
    )
    yield url
    stop_server(proc)
