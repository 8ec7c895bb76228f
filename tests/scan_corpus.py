"""Builders of small scan fixtures: every broken and every unusual image kind, and the five input formats."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def _rgb(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def unusual_images() -> dict[str, bytes]:
    """Valid images that a careless decoder rejects or mangles; each must be scored."""
    base = _rgb(1)
    palette = base.convert("P", palette=Image.ADAPTIVE, colors=16)
    frames = [_rgb(2), _rgb(3)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    deep = Image.fromarray((np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 30).astype(np.uint16))
    return {
        "cmyk.jpg": encode(base.convert("CMYK"), "JPEG"),
        "deep16.png": encode(deep, "PNG"),
        "palette_alpha.png": encode(palette, "PNG", transparency=0),
        "rgba.png": encode(base.convert("RGBA"), "PNG"),
        "animated.gif": animated.getvalue(),
        "wide_strip.png": encode(_rgb(4, (3000, 2)), "PNG"),
        "tall_strip.png": encode(_rgb(5, (2, 2500)), "PNG"),
        "lying_extension.jpg": encode(_rgb(6), "PNG"),  # PNG bytes behind a .jpg name
        "photo.webp": encode(_rgb(7), "WEBP"),
        "one_pixel.png": encode(_rgb(8, (1, 1)), "PNG"),
    }


def broken_images() -> dict[str, tuple[bytes, str]]:
    """Broken files and the error kind each must get."""
    good = encode(_rgb(9, (64, 64)), "PNG")
    bomb = encode(Image.new("1", (8000, 8000)), "PNG")  # 64 M pixels in a few KB: over the 50 M cap
    return {
        "empty.jpg": (b"", "empty"),
        "not_an_image.png": (b"this is a text file, not a picture\n" * 4, "not_an_image"),
        "truncated.png": (good[: len(good) // 2], "truncated"),
        "bomb.png": (bomb, "too_large"),
    }


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def plain_images(count: int, start: int = 100) -> dict[str, bytes]:
    return {f"img_{i:03d}.png": encode(_rgb(start + i, (40 + i % 7, 36)), "PNG") for i in range(count)}


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def add_symlink(path: Path, name: str, target: str) -> None:
    with tarfile.open(path, "a") as tar:
        info = tarfile.TarInfo(name)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        tar.addfile(info)


def wds_samples(count: int, start: int = 0) -> list[tuple[str, bytes]]:
    members = []
    for i in range(count):
        key = f"{start + i:09d}"
        members.append((f"{key}.jpg", encode(_rgb(200 + start + i), "JPEG")))
        members.append((f"{key}.txt", f"caption {i}".encode()))
        members.append((f"{key}.json", json.dumps({"key": key}).encode()))
    return members


def save_safety(tiny_dir: Path, out: Path, flag_everything: bool = False) -> Path:
    """Seeded safety modules for the tiny base; ``flag_everything`` biases the head to a risky level and type."""
    import torch

    from safety_modules import SafeLlava

    model = SafeLlava.from_pretrained(tiny_dir, seed=0)
    if flag_everything:
        head = model.safety.head
        with torch.no_grad():
            head.level_classifier.bias[2] += 20.0
            head.type_classifier.bias[model.config.taxonomy.type_id("privacy")] += 20.0
    return model.safety.save_pretrained(out)
