"""Items of a corpus and how their bytes are read: references, per-item errors, the image root.

An `Item` names where an image's bytes are (a file, a byte range of a tar shard, a parquet cell,
a row of a HF dataset on disk); `load_bytes` reads them later, in a DataLoader worker or a Ray
task. A reference that cannot be read raises `ItemError`, which the scan records as an error row.

Paths written inside a corpus (LLaVA ``image`` fields, parquet path columns, HF ``{bytes, path}``
cells) are hostile: `relative_path_error` refuses absolute paths and ``..`` by looking at the
string alone, before any file-system access, and `load_bytes` refuses a path whose real location
(symlinks followed) is outside the image root. Both give the error kind ``outside_root``, whether
or not the target exists, so a scan report never tells which files exist on the scanning machine.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

OUTSIDE_ROOT = "outside_root"


class ItemError(InputError):
    """Reading an item's bytes failed; ``kind`` is counted like an `ImageDecodeError`'s."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclass
class Item:
    """One image of the corpus: where it is, and its id ``"<source>:<key>"``.

    ``ref`` says how to read the bytes (see `load_bytes`); ``error`` is set (``(kind, message)``)
    when the reader already knows the item is broken (a bad record, an unreadable tar member).
    """

    source: str
    key: str
    ref: dict[str, Any]
    error: tuple[str, str] | None = None

    @property
    def id(self) -> str:
        return f"{self.source}:{self.key}"


def relative_path_error(name: str, allow_absolute: bool) -> tuple[str, str] | None:
    """Why ``name`` (a path written in the corpus) may not be read, from the string alone; None if it may."""
    if "\x00" in name:
        return OUTSIDE_ROOT, f"image path {name!r} holds a NUL byte"
    if os.path.isabs(name):
        if allow_absolute:
            return None
        return OUTSIDE_ROOT, f"image path {name!r} is absolute (pass --allow-absolute-paths to accept absolute paths)"
    if ".." in name.replace("\\", "/").split("/"):
        return OUTSIDE_ROOT, f"image path {name!r} climbs out of the image root with '..'"
    return None


def file_ref(name: str, root: Path, root_real: str, allow_absolute: bool) -> tuple[dict[str, Any], tuple | None]:
    """The reference of a path written in the corpus, or the error that refuses it (no file-system access)."""
    error = relative_path_error(name, allow_absolute)
    if error is not None:
        return {}, error
    if os.path.isabs(name):
        return {"file": name}, None  # allowed explicitly: no root to hold
    return {"file": str(root / name), "root": root_real}, None


def _inside(path: str, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def load_bytes(item: Item) -> bytes | str:
    """The item's image bytes (or a file path to decode). Raises `ItemError` for broken references."""
    ref = item.ref
    if item.error is not None:
        raise ItemError(*item.error)
    if "file" in ref:
        # The reader refused '..' and absolute names already; a symlink may still lead out of the root.
        if "root" in ref and not _inside(ref["file"], ref["root"]):
            raise ItemError(OUTSIDE_ROOT, f"{item.key} resolves outside the image root (a symlink)")
        return ref["file"]
    if "tar" in ref:
        return _tar_member(ref)
    if "parquet" in ref:
        try:
            column = _parquet_group(ref["parquet"], ref.get("version"), ref["group"], ref["column"])
            value = column[ref["row"]].as_py()
        except Exception as exc:  # a damaged row group: this item is lost, the scan goes on
            raise ItemError("unreadable", f"parquet row group {ref['group']} cannot be read: {exc}") from None
        return _cell_bytes(value, ref)
    if "hf" in ref:
        try:
            value = _hf_undecoded(ref["hf"], ref["split"], ref["column"])[ref["row"]][ref["column"]]
        except Exception as exc:
            raise ItemError("unreadable", f"dataset row {ref['row']} cannot be read: {exc}") from None
        return _cell_bytes(value, ref)
    raise ItemError("unreadable", f"unknown item reference {ref}")


def _tar_member(ref: dict[str, Any]) -> bytes:
    try:
        if ref.get("compressed"):
            stream = _decompressed(ref["tar"], ref.get("version"))
            stream.seek(ref["offset"])  # forward: decompress and skip; backward: from the start
            data = stream.read(ref["size"])
        else:
            with open(ref["tar"], "rb") as handle:
                handle.seek(ref["offset"])
                data = handle.read(ref["size"])
    except (OSError, EOFError) as exc:
        raise ItemError("unreadable", f"tar shard cannot be read: {exc}") from None
    if len(data) < ref["size"]:
        raise ItemError("truncated", f"tar member cut short: {len(data)} of {ref['size']} bytes")
    return data


@functools.lru_cache(maxsize=2)
def _decompressed(shard: str, version: int | None):
    # A worker gets a shard's batches in order, so one open stream per shard seeks forward only;
    # ``version`` as for `_parquet_group`.
    import tarfile

    return tarfile.open(shard, mode="r:*").fileobj


def _cell_bytes(value: Any, ref: dict[str, Any]) -> bytes | str:
    """A parquet/HF cell: raw bytes, a ``{bytes, path}`` struct (the HF Image layout) or a path.

    In a struct, ``bytes`` wins whenever it is there, empty or not (as `datasets` reads it): an
    empty ``bytes`` is an empty image, never a cue to read the file its ``path`` names.
    """
    if isinstance(value, dict):
        value = value["bytes"] if value.get("bytes") is not None else value.get("path")
    if value is None:
        raise ItemError("empty", "null image cell")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        file, error = file_ref(value, Path(ref["root_dir"]), ref["root"], ref.get("absolute", False))
        if error is not None:
            raise ItemError(*error)
        return load_bytes(Item("", value, file))
    raise ItemError("bad_record", f"image cell of type {type(value).__name__} is neither bytes nor a path")


@functools.lru_cache(maxsize=2)
def _parquet_group(file: str, version: int | None, group: int, column: str):
    # Items arrive in order, so caching the last row groups reads each one about once per worker.
    # ``version`` (the file's mtime when it was listed) keeps a file rewritten since from being read stale.
    import pyarrow.parquet as pq

    return pq.ParquetFile(file).read_row_group(group, columns=[column]).column(column)


@functools.lru_cache(maxsize=4)
def _hf_undecoded(folder: str, split: str | None, column: str):
    from datasets import Image as HFImage

    ds = dict(hf_splits(Path(folder)))[split]
    if isinstance(ds.features.get(column), HFImage):
        ds = ds.cast_column(column, HFImage(decode=False))  # bytes, not PIL: decoding is ours
    return ds


def hf_splits(folder: Path) -> list[tuple[str | None, Any]]:
    """The splits of a ``save_to_disk`` folder, in name order (``[(None, ds)]`` for a single `Dataset`)."""
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(str(folder))
    if isinstance(loaded, DatasetDict):
        return [(name, loaded[name]) for name in sorted(loaded)]
    return [(None, loaded)]
