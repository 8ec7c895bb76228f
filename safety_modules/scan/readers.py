"""Corpus readers: five input formats streamed as lightweight item references.

A reader never holds a corpus in memory: it yields `Item`s that name where an
image's bytes are (a file, a byte range of a tar shard, a parquet cell, a row of a
HF dataset on disk); `load_bytes` reads them later, in a DataLoader worker or a
Ray task. Every item has a stable id ``"<source>:<key>"`` (``source`` is the file or
shard it comes from, relative to the input; ``key`` is its name inside it), and the
order of items is deterministic, so a resumed scan sees the same items in the same order.

Formats (``kind``): ``folder`` (images under a folder, recursive), ``llava`` (LLaVA
JSON/JSONL with an ``image`` field, resolved against ``image_root``), ``wds``
(webdataset/img2dataset ``.tar`` shards: ``KEY.jpg|png|webp`` + ``KEY.json``/``KEY.txt``),
``parquet`` (a column of image bytes, HF ``{bytes, path}`` structs or paths) and
``hf`` (a `datasets` folder written by ``save_to_disk``).
"""

from __future__ import annotations

import functools
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
READER_KINDS = ("folder", "llava", "wds", "parquet", "hf")
_IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "img", "image_bytes", "image_path", "path")
_ID_COLUMNS = ("id", "key", "uid", "__key__")


class ItemError(InputError):
    """Reading an item's bytes failed; ``kind`` is counted like an `ImageDecodeError`'s."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclass
class Item:
    """One image of the corpus: where it is, and its stable id.

    ``ref`` says how to read the bytes (see `load_bytes`); ``error`` is set (``(kind, message)``)
    when the reader already knows the item is broken (an unreadable tar member, a damaged shard).
    """

    source: str
    key: str
    ref: dict[str, Any]
    error: tuple[str, str] | None = None

    @property
    def id(self) -> str:
        return f"{self.source}:{self.key}"


@dataclass
class ReaderOptions:
    """How to read the input; everything but ``kind`` applies to some formats only."""

    kind: str = "auto"
    image_root: str | None = None  # llava (and parquet path columns): where relative image paths start
    image_column: str | None = None  # parquet/hf: the column holding the image
    id_column: str | None = None  # parquet/hf: a column holding stable keys (default: row number)


def detect_kind(path: Path) -> str:
    """Guess the reader from the input: a file's suffix, or what a folder holds."""
    if path.is_file():
        name = path.name.lower()
        if name.endswith(".tar"):
            return "wds"
        if name.endswith(".parquet"):
            return "parquet"
        if name.endswith((".json", ".jsonl")):
            return "llava"
        raise InputError(f"cannot tell the format of {path}; pass --reader ({', '.join(READER_KINDS)})")
    if not path.is_dir():
        raise FileNotFoundError(f"scan input not found: {path}")
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return "hf"
    names = [p.name.lower() for p in path.iterdir() if p.is_file()]
    if any(n.endswith(".tar") for n in names):
        return "wds"
    if any(n.endswith(".parquet") for n in names):
        return "parquet"
    return "folder"


class CorpusReader:
    """Streams the items of one input in a fixed order."""

    def __init__(self, input_path: str | Path, options: ReaderOptions | None = None) -> None:
        self.path = Path(input_path)
        self.options = options or ReaderOptions()
        self.kind = detect_kind(self.path) if self.options.kind == "auto" else self.options.kind
        if self.kind not in READER_KINDS:
            raise ConfigError(f"unknown reader {self.kind!r}; use one of {READER_KINDS} or 'auto'")
        if not self.path.exists():
            raise FileNotFoundError(f"scan input not found: {self.path}")

    def describe(self) -> dict[str, Any]:
        """What the manifest records so a resumed scan can check it reads the same input."""
        return {
            "path": str(self.path.resolve()),
            "reader": self.kind,
            **{k: v for k, v in vars(self.options).items() if k != "kind" and v is not None},
        }

    def __iter__(self) -> Iterator[Item]:
        return getattr(self, f"_iter_{self.kind}")()

    def count(self) -> int:
        """Number of items (a cheap pass: listings and metadata, no image bytes)."""
        if self.kind == "parquet":
            return sum(_parquet_rows(f) for f in self._files(".parquet"))
        if self.kind == "hf":
            return sum(len(ds) for _, ds in _hf_splits(self.path))
        return sum(1 for _ in self)

    # ------------------------------------------------------------------ helpers

    def _files(self, suffix: str) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        return sorted(p for p in self.path.rglob(f"*{suffix}") if p.is_file())

    def _source(self, file: Path) -> str:
        base = self.path if self.path.is_dir() else self.path.parent
        return file.relative_to(base).as_posix()

    # ------------------------------------------------------------------ folder

    def _iter_folder(self) -> Iterator[Item]:
        root = self.path
        # os.walk lists with scandir (the entry types come with the listing): no stat per file here.
        files = sorted(
            Path(folder, name)
            for folder, _, names in os.walk(root)
            for name in names
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        )
        for file in files:
            yield Item(root.name, file.relative_to(root).as_posix(), {"file": str(file)})

    # ------------------------------------------------------------------ LLaVA JSON / JSONL

    def _iter_llava(self) -> Iterator[Item]:
        files = [self.path] if self.path.is_file() else self._files(".json") + self._files(".jsonl")
        for file in files:
            root = Path(self.options.image_root) if self.options.image_root else file.parent
            source = self._source(file)
            for index, entry in _llava_entries(file):
                images = entry.get("image") if isinstance(entry, dict) else None
                if not images:
                    continue  # text-only conversations have nothing to scan
                name = str(entry.get("id", index))
                images = images if isinstance(images, list) else [images]
                for n, image in enumerate(images):
                    key = name if len(images) == 1 else f"{name}#{n}"
                    path = Path(image) if Path(image).is_absolute() else root / image
                    # A missing file is found when a worker reads it (an "unreadable" row), not by a stat here.
                    yield Item(source, key, {"file": str(path)})

    # ------------------------------------------------------------------ webdataset tars

    def _iter_wds(self) -> Iterator[Item]:
        for shard in self._files(".tar"):
            yield from _tar_items(shard, self._source(shard))

    # ------------------------------------------------------------------ parquet

    def _iter_parquet(self) -> Iterator[Item]:
        import pyarrow.parquet as pq

        for file in self._files(".parquet"):
            source = self._source(file)
            try:
                pfile = pq.ParquetFile(file)
            except Exception as exc:  # a corrupt file: one error row, the rest of the corpus goes on
                yield Item(source, "*", {}, ("unreadable", f"parquet file cannot be opened: {exc}"))
                continue
            names = pfile.schema_arrow.names
            column = self.options.image_column or _pick(names, _IMAGE_COLUMNS, f"image column in {file}")
            id_column = self.options.id_column or next((c for c in _ID_COLUMNS if c in names), None)
            is_path = str(pfile.schema_arrow.field(column).type) in ("string", "large_string")
            root = Path(self.options.image_root) if self.options.image_root else file.parent
            wanted = [c for c in dict.fromkeys([column if is_path else None, id_column]) if c]
            row = 0
            for group in range(pfile.num_row_groups):
                # One conversion per row group (not one Arrow scalar per row): the ids and the paths as lists.
                table = pfile.read_row_group(group, columns=wanted) if wanted else None
                keys = table.column(id_column).to_pylist() if id_column else None
                paths = table.column(column).to_pylist() if is_path else None
                for i in range(pfile.metadata.row_group(group).num_rows):
                    key = str(keys[i]) if keys is not None else str(row)
                    if paths is not None:
                        value = paths[i]
                        if value is None:
                            yield Item(source, key, {}, ("empty", f"row {row}: null path"))
                        else:
                            yield Item(source, key, {"file": str(value if Path(value).is_absolute() else root / value)})
                    else:
                        yield Item(source, key, {"parquet": str(file), "group": group, "row": i, "column": column})
                    row += 1

    # ------------------------------------------------------------------ HF datasets (save_to_disk)

    def _iter_hf(self) -> Iterator[Item]:
        for split, ds in _hf_splits(self.path):
            column = self.options.image_column or _hf_image_column(ds)
            id_column = self.options.id_column or next((c for c in _ID_COLUMNS if c in ds.column_names), None)
            ids = ds[id_column] if id_column else None
            source = self.path.name if split is None else f"{self.path.name}/{split}"
            for row in range(len(ds)):
                key = str(ids[row]) if ids is not None else str(row)
                yield Item(source, key, {"hf": str(self.path), "split": split, "row": row, "column": column})


# ---------------------------------------------------------------------- reading an item's bytes


def load_bytes(item: Item) -> bytes | str:
    """The item's image bytes (or a file path to decode). Raises `ItemError` for broken references."""
    ref = item.ref
    if item.error is not None:
        raise ItemError(*item.error)
    if "file" in ref:
        return ref["file"]
    if "tar" in ref:
        try:
            with open(ref["tar"], "rb") as handle:
                handle.seek(ref["offset"])
                data = handle.read(ref["size"])
        except OSError as exc:
            raise ItemError("unreadable", f"tar shard cannot be read: {exc}") from None
        if len(data) < ref["size"]:
            raise ItemError("truncated", f"tar member cut short: {len(data)} of {ref['size']} bytes")
        return data
    if "parquet" in ref:
        try:
            value = _parquet_group(ref["parquet"], ref["group"], ref["column"])[ref["row"]].as_py()
        except Exception as exc:  # a damaged row group: this item is lost, the scan goes on
            raise ItemError("unreadable", f"parquet row group {ref['group']} cannot be read: {exc}") from None
        return _cell_bytes(value, Path(ref["parquet"]).parent)
    if "hf" in ref:
        try:
            value = _hf_undecoded(ref["hf"], ref["split"], ref["column"])[ref["row"]][ref["column"]]
        except Exception as exc:
            raise ItemError("unreadable", f"dataset row {ref['row']} cannot be read: {exc}") from None
        return _cell_bytes(value, Path(ref["hf"]))
    raise ItemError("unreadable", f"unknown item reference {ref}")


def _cell_bytes(value: Any, root: Path) -> bytes | str:
    """A parquet/HF cell: raw bytes, a ``{bytes, path}`` struct (the HF Image layout) or a path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if value is None:
        raise ItemError("empty", "null image cell")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value if Path(value).is_absolute() else str(root / value)
    raise ItemError("unreadable", f"image cell of type {type(value).__name__} is neither bytes nor a path")


@functools.lru_cache(maxsize=2)
def _parquet_group(file: str, group: int, column: str):
    # Items arrive in order, so caching the last row groups reads each one about once per worker.
    import pyarrow.parquet as pq

    return pq.ParquetFile(file).read_row_group(group, columns=[column]).column(column)


@functools.lru_cache(maxsize=4)
def _hf_undecoded(folder: str, split: str | None, column: str):
    from datasets import Image as HFImage

    ds = dict(_hf_splits(Path(folder)))[split]
    if isinstance(ds.features.get(column), HFImage):
        ds = ds.cast_column(column, HFImage(decode=False))  # bytes, not PIL: decoding is ours
    return ds


def _hf_splits(folder: Path):
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(str(folder))
    if isinstance(loaded, DatasetDict):
        return [(name, loaded[name]) for name in sorted(loaded)]
    return [(None, loaded)]


def _hf_image_column(ds) -> str:
    from datasets import Image as HFImage

    for name, feature in ds.features.items():
        if isinstance(feature, HFImage):
            return name
    return _pick(ds.column_names, _IMAGE_COLUMNS, "image column in the dataset")


def _pick(names: list[str], candidates: tuple[str, ...], what: str) -> str:
    for name in candidates:
        if name in names:
            return name
    raise InputError(f"no {what}: columns are {names}; name it with --image-column")


def _parquet_rows(file: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file).metadata.num_rows
    except Exception:
        return 1  # the one error row a corrupt file gets


def _llava_entries(file: Path) -> Iterator[tuple[int, Any]]:
    if file.suffix.lower() == ".jsonl":
        with open(file, encoding="utf-8") as handle:
            for index, line in enumerate(handle):
                if line.strip():
                    yield index, json.loads(line)
    else:
        # LLaVA instruction files are one JSON array of annotations (text only; images stay on disk).
        entries = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(entries, list):
            raise InputError(f"{file}: expected a JSON list of LLaVA entries")
        yield from enumerate(entries)


def _tar_items(shard: Path, source: str) -> Iterator[Item]:
    """Image members of a webdataset shard as byte ranges; the key is the name up to its first dot."""
    try:
        archive = tarfile.open(shard, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        yield Item(source, "*", {}, ("unreadable", f"not a readable tar shard: {exc}"))
        return
    seen: set[str] = set()
    with archive:
        members = iter(archive)
        while True:
            try:
                member = next(members)
            except StopIteration:
                break
            except (tarfile.TarError, OSError, EOFError) as exc:
                yield Item(source, f"*after:{len(seen)}", {}, ("unreadable", f"tar shard damaged: {exc}"))
                break
            directory, _, base = member.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            key = f"{directory}/{stem}" if directory else stem
            if ("." + ext.lower()) not in IMAGE_EXTENSIONS:
                continue  # captions (.txt) and metadata (.json) belong to the sample, not the scan
            if key in seen:
                continue  # webdataset: one image per key; the first one wins
            seen.add(key)
            if not member.isfile():
                yield Item(source, key, {}, ("unreadable", f"tar member {member.name} is not a regular file"))
            else:
                yield Item(source, key, {"tar": str(shard), "offset": member.offset_data, "size": member.size})
