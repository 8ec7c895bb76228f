"""No hidden global state: the library leaves PIL's switches, matplotlib's backend, the global torch RNG and the
process's fork hooks as it found them."""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from safetensors.torch import load_file

from safety_modules.images import ImageDecodeError, decode_image
from safety_modules.testing.tiny import make_tiny

ROOT = Path(__file__).resolve().parents[2]


def _png(size: tuple[int, int] = (64, 48)) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decoding_leaves_the_pil_truncation_switch_as_the_application_set_it():
    good = _png()
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # PIL's default
    with pytest.raises(ImageDecodeError) as info:
        decode_image(good[: len(good) // 2])
    assert info.value.kind == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # an application's own, process-wide choice
    try:
        assert decode_image(good).size == (64, 48)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_make_tiny_seeds_its_weights_without_touching_the_global_rng(tmp_path):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    make_tiny(tmp_path / "a", seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(7)  # a different global state: the weights must not depend on it
    make_tiny(tmp_path / "b", seed=0)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_library_never_uses_pyplot_or_sets_a_matplotlib_backend():
    """Pictures are drawn on `matplotlib.figure.Figure` objects: no global backend, no pyplot figure registry."""
    offenders = []
    for path in sorted((ROOT / "safety_modules").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use":
                if isinstance(node.func.value, ast.Name) and node.func.value.id in ("matplotlib", "mpl"):
                    names = ["matplotlib.use"]
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno} {n}"
                for n in names
                if n.startswith("matplotlib.pyplot") or n == "matplotlib.use"
            ]
    assert not offenders, "\n".join(offenders)


def test_the_scan_lock_registers_its_fork_hook_on_the_first_lock_not_at_import(tmp_path):
    """A spy on `os.register_at_fork` (the real one still runs) counts the hooks of `safety_modules`."""
    code = f"""
import json, os
ours = []
real = os.register_at_fork
def spy(**hooks):
    modules = [getattr(f, "__module__", None) or "" for f in hooks.values()]
    ours.extend(m for m in modules if m.startswith("safety_modules"))
    real(**hooks)
os.register_at_fork = spy
import safety_modules.scan
from safety_modules.output_lock import OutputLock
counts = [len(ours)]
for folder in ("a", "b"):
    with OutputLock(os.path.join({str(tmp_path)!r}, folder)):
        counts.append(len(ours))
print(json.dumps(counts))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [0, 1, 1]
