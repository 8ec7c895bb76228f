"""Test assets for the server: the tiny base, sharpened safety modules, a policy that splits the test images.

Fresh modules score every image almost alike, so no policy would tell them apart. The head's
classifier weights are scaled up ("sharpened") so its probabilities differ per image, and the
policy's thresholds are set from the scores the modules really give: the white (blank) image is
refused, the photos are allowed, and one of them is hinted. The thresholds are computed, not
hard-coded, and the split is checked before any test relies on it.
"""

from __future__ import annotations

import io
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from safety_modules import SafeLlava, SafetyPolicy
from safety_modules.images import blank_image

SHARPEN = 10.0
PROMPTS = ("What is shown in this image?", "Describe the picture in detail.", "")
REFUSED_TYPE = "illegal_risk"
HINTED_TYPE = "insults_bullying"


@dataclass
class Assets:
    base: Path
    safety: Path
    policy: Path
    photos: list[Image.Image]  # allowed or hinted
    refused: list[Image.Image]  # refused by the policy

    def serve_args(self) -> list[str]:
        """``safevlm serve`` options that load these modules and this policy."""
        return [
            *["--base", str(self.base), "--safety", str(self.safety), "--policy", str(self.policy)],
            *["--served-model-name", "tiny", "tiny-alias"],
        ]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noise_image(seed: int, size=(300, 200)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def build_assets(base: Path, out: Path, photos: list[Image.Image]) -> Assets:
    model = SafeLlava.from_pretrained(base, seed=0, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for name, module in model.safety.named_modules():
            if name.endswith(("level_classifier", "type_classifier")):
                module.weight.mul_(SHARPEN)
    safety = model.safety.save_pretrained(out / "safety")
    refused = [blank_image()]
    # Refuse REFUSED_TYPE where severe = q[type] * p[reject] is high: find a threshold between the groups,
    # over every prompt the tests send (the head reads the prompt) and no prompt (proxy mode).
    t = model.config.taxonomy.type_id(REFUSED_TYPE)

    def severe(images):
        values = []
        for prompt in PROMPTS:
            scores = model.assess(images, [prompt] * len(images))
            values += (scores.type_probs[:, t] * scores.level_probs[:, -1]).tolist()
        scores = model.assess(images)
        return values + (scores.type_probs[:, t] * scores.level_probs[:, -1]).tolist()

    low, high = max(severe(photos)), min(severe(refused))
    assert low < high, f"sharpened modules do not separate the test images ({low} >= {high})"
    # Hint HINTED_TYPE for the photo with the highest image-only risk = q[type] * (1 - p[safe level]),
    # so that proxy mode (image only) forwards one hinted request.
    scores = model.assess(photos)
    h = model.config.taxonomy.type_id(HINTED_TYPE)
    risk = sorted((scores.type_probs[:, h] * (1 - scores.level_probs[:, 0])).tolist())
    policy = {
        "name": "serve_test",
        "defaults": {"hint": None, "refuse": None},
        "types": {
            REFUSED_TYPE: {"refuse": math.sqrt(low * high)},
            HINTED_TYPE: {"hint": math.sqrt(risk[-1] * risk[-2])},
        },
    }
    policy_path = out / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy))
    SafetyPolicy.from_yaml(policy_path, model.config.taxonomy)  # valid
    return Assets(base, safety, policy_path, photos, refused)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], log: Path, timeout_s: float = 60.0) -> tuple[subprocess.Popen, str]:
    """`safevlm serve` in a subprocess on a free port; returns it once /health answers.

    OpenMP threads wait passively (as docs/serving.md advises on a shared CPU): spinning ones
    starve the model loop and the other processes of the test run."""
    import httpx

    port = free_port()
    env_path = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen(
        [sys.executable, "-m", "safety_modules.cli", "serve", *args, "--port", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONPATH": env_path},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become healthy in {timeout_s} s: {log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
