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


def jpegs(count: int, start: int = 300) -> list[bytes]:
    """Distinct small JPEGs (the same bytes go into every format a cross-reader test compares)."""
    return [encode(_rgb(start + i, (44 + i % 5, 38)), "JPEG", quality=90) for i in range(count)]


def img2dataset_output(folder: Path, output_format: str, images: list[bytes | None], per_shard: int = 4) -> list[str]:
    """A corpus laid out as img2dataset writes it (its ``writer.py``); returns the keys, in order.

    ``output_format`` is ``files``, ``webdataset`` or ``parquet``. A ``None`` image is a failed
    download: img2dataset writes its metadata row only. Shards are ``{shard:05d}``, keys
    ``{shard:05d}{index:04d}`` (img2dataset's ``compute_key`` with 5 + 4 digits), each shard with its
    ``{shard:05d}.parquet`` metadata (for ``parquet`` that file is the data, with a ``jpg`` column)
    and a ``{shard:05d}_stats.json``. Written with pyarrow and webdataset's `TarWriter`, as img2dataset does.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from webdataset import TarWriter

    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [("key", pa.string()), ("caption", pa.string()), ("url", pa.string()), ("status", pa.string())]
        + [("error_message", pa.string()), ("width", pa.int64()), ("height", pa.int64())]
    )
    keys = []
    for shard, start in enumerate(range(0, len(images), per_shard)):
        name = f"{shard:05d}"
        rows, tar = [], None
        if output_format == "webdataset":
            tar = TarWriter(str(folder / f"{name}.tar"))
        if output_format == "files":
            (folder / name).mkdir()
        for index, data in enumerate(images[start : start + per_shard]):
            key = f"{shard:05d}{index:04d}"
            keys.append(key)
            ok = data is not None
            meta = {"key": key, "caption": f"caption {key}", "url": f"http://example.com/{key}.jpg"}
            meta |= {"status": "success" if ok else "failed_to_download", "error_message": None if ok else "404"}
            meta |= {"width": 44 if ok else None, "height": 38 if ok else None}
            rows.append({**meta, "jpg": data} if output_format == "parquet" else meta)
            if not ok:
                continue
            if tar is not None:
                tar.write({"__key__": key, "jpg": data, "txt": meta["caption"], "json": json.dumps(meta, indent=4)})
            elif output_format == "files":
                (folder / name / f"{key}.jpg").write_bytes(data)
                (folder / name / f"{key}.txt").write_text(meta["caption"])
                (folder / name / f"{key}.json").write_text(json.dumps(meta, indent=4))
        if tar is not None:
            tar.close()
        table_schema = schema.append(pa.field("jpg", pa.binary())) if output_format == "parquet" else schema
        pq.write_table(pa.Table.from_pylist(rows, schema=table_schema), folder / f"{name}.parquet")
        stats = {"count": len(rows), "successes": sum(r["status"] == "success" for r in rows)}
        (folder / f"{name}_stats.json").write_text(json.dumps(stats))
    return keys
