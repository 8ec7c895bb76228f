"""Which reader an input needs, decided from everything it holds (recursively), not its first file.

Recognised: a folder of images (img2dataset's ``files`` output too: ``00000/`` image folders beside
``00000.parquet`` metadata), webdataset shards (``.tar``, ``.tar.gz``, ``.tgz``; img2dataset's
``webdataset`` output, whose ``00000.parquet`` beside ``00000.tar`` is metadata), parquet files
(img2dataset's ``parquet`` output, a HF hub repository's ``data/`` folder, hive partitions such as
``split=train/part-0.parquet``), LLaVA JSON/JSONL, and ``save_to_disk`` folders. A folder that holds
two of these kinds is refused, naming what it found and the ``--reader`` that picks one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
JSON_SUFFIXES = (".json", ".jsonl")
READER_KINDS = ("folder", "llava", "wds", "parquet", "hf")
_HF_MARKERS = ("dataset_info.json", "dataset_dict.json")


def suffix(name: str) -> str:
    """A file's kind suffix, lower case: ``.tar.gz`` as one, ``(none)`` without any."""
    lower = name.lower()
    if lower.endswith(".tar.gz"):
        return ".tar.gz"
    return os.path.splitext(lower)[1] or "(none)"


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk(root: Path) -> list[str]:
    """Every file under ``root``, as paths relative to it, in a fixed order (by path components).

    Directory symlinks are not followed (a corpus must not lead the scan elsewhere); os.walk lists
    with scandir, so no stat per file.
    """
    found = (
        os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
        for folder, _, names in os.walk(root)
        for name in names
    )
    return sorted(found, key=lambda rel: rel.split("/"))


def metadata_parquets(files: Iterable[str]) -> set[str]:
    """img2dataset's per-shard metadata: ``X.parquet`` beside a shard ``X.tar`` or a folder ``X/``."""
    files = list(files)
    stems = {f[: -len(s)] for f in files for s in SHARD_SUFFIXES if f.lower().endswith(s)}
    folders = {f.rpartition("/")[0] for f in files if "/" in f}
    return {f for f in files if f.lower().endswith(".parquet") and (f[:-8] in stems or f[:-8] in folders)}


def detect_kind(path: Path) -> str:
    """The reader for ``path``: a file's suffix, or what a folder holds. Raises `ValueError` naming what it found."""
    if path.is_file():
        name = path.name.lower()
        if name.endswith(SHARD_SUFFIXES):
            return "wds"
        if name.endswith(".parquet"):
            return "parquet"
        if name.endswith(JSON_SUFFIXES):
            return "llava"
        raise InputError(f"cannot tell the format of the input {path}; pass --reader ({', '.join(READER_KINDS)})")
    if not path.is_dir():
        raise FileNotFoundError(f"scan input not found: {path}")
    if any((path / marker).is_file() for marker in _HF_MARKERS):
        return "hf"
    files = walk(path)
    metadata = metadata_parquets(files)
    found = {
        "folder": [f for f in files if is_image_name(f)],
        "wds": [f for f in files if f.lower().endswith(SHARD_SUFFIXES)],
        "parquet": [f for f in files if f.lower().endswith(".parquet") and f not in metadata],
    }
    kinds = [kind for kind, names in found.items() if names]
    if len(kinds) == 1:
        return kinds[0]
    if not kinds:
        llava = [f for f in files if f.lower().endswith(JSON_SUFFIXES)]
        if llava:
            return "llava"
        raise InputError(
            f"the input {path} holds no images, tar shards, parquet files or LLaVA JSON "
            f"({_describe_files(files)}); pass --reader ({', '.join(READER_KINDS)}) if it is one of them"
        )
    what = {"folder": "image files", "wds": "tar shards", "parquet": "parquet files"}
    listing = "; ".join(f"{len(found[k])} {what[k]} (e.g. {found[k][0]})" for k in kinds)
    choices = " or ".join(f"--reader {k}" for k in kinds)
    raise InputError(
        f"the input {path} mixes kinds: {listing}. Scanning one kind would leave the others unscanned; "
        f"pass {choices} to scan one kind, or scan each kind separately"
    )


def _describe_files(files: list[str]) -> str:
    if not files:
        return "it is empty"
    counts: dict[str, int] = {}
    for name in files:
        counts[suffix(name)] = counts.get(suffix(name), 0) + 1
    return "found " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
