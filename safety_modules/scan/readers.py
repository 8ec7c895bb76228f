"""Corpus readers: five input formats streamed as lightweight item references, with an account.

A reader never holds a corpus in memory: it yields `Item`s that name where an image's bytes are;
`items.load_bytes` reads them later, in a DataLoader worker or a Ray task. Every item has an id
``"<source>:<key>"`` (``source``: the file or shard it comes from, relative to the input; ``key``:
its name inside it) that is unique within the scan: a key met twice in one source is renamed
``key@<where>`` (``record12``, ``line5``, ``member7``, ``row3``: where it is in its source), and
the renaming is counted. The order of items is deterministic, so a resumed scan sees the same
items in the same order. Nothing is dropped silently: an entry without an image is counted as
skipped with its reason, a broken one becomes an item with an error, and files or tar members
that are not images are counted by suffix (`account.Account`).

Formats (``kind``): ``folder`` (images under a folder, recursive), ``llava`` (LLaVA JSON/JSONL
with an ``image`` field, resolved against ``image_root``), ``wds`` (webdataset/img2dataset tar
shards, plain or compressed), ``parquet`` (a column of image bytes, HF ``{bytes, path}`` structs or
paths) and ``hf`` (a `datasets` folder written by ``save_to_disk``). `detect.detect_kind` picks one.
"""

from __future__ import annotations

import io
import itertools
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..data.format import RecordError, iter_jsonl
from ..errors import ConfigError, InputError
from ..safe_files import parse_json
from .account import INPUT, Account
from .detect import (
    IMAGE_EXTENSIONS,
    JSON_SUFFIXES,
    READER_KINDS,
    SHARD_SUFFIXES,
    detect_kind,
    is_image_name,
    metadata_parquets,
    suffix,
    walk,
)
from .items import Item, ItemError, file_ref, hf_splits, load_bytes

__all__ = [
    "IMAGE_EXTENSIONS",
    "READER_KINDS",
    "CorpusReader",
    "Item",
    "ItemError",
    "ReaderOptions",
    "detect_kind",
    "load_bytes",
]

_IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "img", "image_bytes", "image_path", "path")
_ID_COLUMNS = ("id", "key", "uid", "__key__")

Located = tuple[Item, "str | None"]  # an item and where it is in its source (None: its key is unique already)


@dataclass
class ReaderOptions:
    """How to read the input; everything but ``kind`` applies to some formats only."""

    kind: str = "auto"
    image_root: str | None = None  # llava (and parquet/hf paths): where relative image paths start
    image_column: str | None = None  # parquet/hf: the column holding the image
    id_column: str | None = None  # parquet/hf: a column holding stable keys (default: row number)
    allow_absolute_paths: bool = False  # llava/parquet/hf: read absolute image paths (outside any root)


class CorpusReader:
    """Streams the items of one input in a fixed order; ``account`` holds the last pass's counts."""

    def __init__(self, input_path: str | Path, options: ReaderOptions | None = None) -> None:
        self.path = Path(input_path)
        self.options = options or ReaderOptions()
        if not self.path.exists():
            raise FileNotFoundError(f"scan input not found: {self.path}")
        self.kind = detect_kind(self.path) if self.options.kind == "auto" else self.options.kind
        if self.kind not in READER_KINDS:
            raise ConfigError(f"unknown reader {self.kind!r}; use one of {READER_KINDS} or 'auto'")
        self.account = Account()

    def describe(self) -> dict[str, Any]:
        """What the manifest records so a resumed scan can check it reads the same input."""
        options = {f.name: getattr(self.options, f.name) for f in fields(self.options) if f.name != "kind"}
        return {"path": str(self.path.resolve()), "reader": self.kind, **{k: v for k, v in options.items() if v}}

    def __iter__(self) -> Iterator[Item]:
        self.account = account = Account()
        if self.path.is_dir() and self.kind != "hf":
            self._listing: list[str] = walk(self.path)
        keys: set[str] = set()
        current = None
        for item, where in getattr(self, f"_iter_{self.kind}")():
            counts = account.of(item.source)
            if where is not None:
                if item.source != current:  # sources come one after the other: one key set at a time
                    keys, current = set(), item.source
                if item.key in keys:
                    item.key = _unique(f"{item.key}@{where}", keys)
                    counts.renamed["duplicate_id"] += 1
                keys.add(item.key)
            counts.items += 1
            yield item

    def count(self) -> int:
        """Number of items, for the progress bar (parquet/hf: from metadata, no pass over the rows)."""
        if self.kind == "parquet":
            return sum(_parquet_rows(f) for f in self._files(".parquet"))
        if self.kind == "hf":
            return sum(len(ds) for _, ds in hf_splits(self.path))
        return sum(1 for _ in self)

    # ------------------------------------------------------------------ helpers

    def _files(self, *suffixes: str) -> list[Path]:
        """The input's files ending in ``suffixes`` (the input itself when it is a file)."""
        if self.path.is_file():
            return [self.path]
        listing = getattr(self, "_listing", None) or walk(self.path)
        return [self.path / rel for rel in listing if rel.lower().endswith(suffixes)]

    def _count_unread(self, read: set[str]) -> None:
        """Count the input folder's files that this reader does not read, by suffix (nothing passes unsaid)."""
        unread = [suffix(rel) for rel in self._listing if rel not in read]
        if unread:
            self.account.of(INPUT).not_images.update(unread)

    def _source(self, file: Path) -> str:
        base = self.path if self.path.is_dir() else self.path.parent
        return file.relative_to(base).as_posix()

    def _root(self, file: Path) -> tuple[Path, str]:
        root = Path(self.options.image_root) if self.options.image_root else file.parent
        return root, os.path.realpath(root)

    # ------------------------------------------------------------------ folder

    def _iter_folder(self) -> Iterator[Located]:
        root, root_real = self.path, os.path.realpath(self.path)
        images = [rel for rel in self._listing if is_image_name(rel)]
        self._count_unread(set(images))
        # img2dataset's `files` output: an image's key is its file stem, its source the shard folder.
        shards = {p[:-8] for p in metadata_parquets(self._listing)}
        for rel in images:
            folder, _, name = rel.rpartition("/")
            ref = {"file": str(root / rel), "root": root_real}
            if folder in shards:
                yield Item(folder, os.path.splitext(name)[0], ref), name
            else:
                yield Item(root.name, rel, ref), None  # a path relative to the folder is unique

    # ------------------------------------------------------------------ LLaVA JSON / JSONL

    def _iter_llava(self) -> Iterator[Located]:
        files = self._files(*JSON_SUFFIXES)
        if self.path.is_dir():
            self._count_unread({self._source(f) for f in files})
        for file in files:
            root, root_real = self._root(file)
            source = self._source(file)
            for where, index, entry in _llava_records(file):
                if isinstance(entry, RecordError):
                    yield Item(source, where, {}, ("bad_record", str(entry))), where
                    continue
                if not isinstance(entry, dict):
                    message = f"{source} {where}: a record must be a JSON object, not {type(entry).__name__}"
                    yield Item(source, str(index), {}, ("bad_record", message)), where
                    continue
                images = entry.get("image")
                if images is None or images == "" or images == []:
                    self.account.of(source).skipped["text_only"] += 1  # nothing to scan, but counted
                    continue
                name = str(entry["id"]) if entry.get("id") is not None else str(index)
                many = isinstance(images, list)
                for n, image in enumerate(images if many else [images]):
                    key = f"{name}#{n}" if many and len(images) > 1 else name
                    if not isinstance(image, str):
                        kind = type(image).__name__
                        message = f"{source} {where}: image field holds a {kind}, not a path"
                        yield Item(source, key, {}, ("bad_record", message)), where
                        continue
                    ref, error = file_ref(image, root, root_real, self.options.allow_absolute_paths)
                    # A missing file is found when a worker reads it (an "unreadable" row), not by a stat here.
                    yield Item(source, key, ref, error), where

    # ------------------------------------------------------------------ webdataset tars

    def _iter_wds(self) -> Iterator[Located]:
        shards = self._files(*SHARD_SUFFIXES)
        if self.path.is_dir():
            self._count_unread({self._source(s) for s in shards})
        for shard in shards:
            yield from _tar_items(shard, self._source(shard), self.account)

    # ------------------------------------------------------------------ parquet

    def _iter_parquet(self) -> Iterator[Located]:
        import pyarrow.parquet as pq

        files = self._files(".parquet")
        if self.path.is_dir():
            self._count_unread({self._source(f) for f in files})
        for file in files:
            source = self._source(file)
            try:
                pfile = pq.ParquetFile(file)
                names = pfile.schema_arrow.names
            except Exception as exc:  # a corrupt file: one error row, the rest of the corpus goes on
                yield Item(source, "*", {}, ("unreadable", f"parquet file cannot be opened: {exc}")), None
                continue
            column = self.options.image_column or next((c for c in _IMAGE_COLUMNS if c in names), None)
            if column is None or column not in names:
                message = f"no image column in {source}: columns are {names}; name it with --image-column"
                yield Item(source, "*", {}, ("no_image_column", message)), None
                continue
            yield from self._parquet_items(pfile, file, source, column, names)

    def _parquet_items(self, pfile: Any, file: Path, source: str, column: str, names: list[str]) -> Iterator[Located]:
        id_column = self.options.id_column or next((c for c in _ID_COLUMNS if c in names), None)
        is_path = str(pfile.schema_arrow.field(column).type) in ("string", "large_string")
        root, root_real = self._root(file)
        cell: dict[str, Any] = {
            "column": column,
            "root_dir": str(root),
            "root": root_real,
            "version": file.stat().st_mtime_ns,
        }
        if self.options.allow_absolute_paths:
            cell["absolute"] = True
        wanted = [c for c in dict.fromkeys([column if is_path else None, id_column]) if c]
        row = 0
        for group in range(pfile.num_row_groups):
            size = pfile.metadata.row_group(group).num_rows
            try:
                # One conversion per row group (not one Arrow scalar per row): the ids and the paths as lists.
                keys = paths = None
                if wanted:
                    table = pfile.read_row_group(group, columns=wanted)
                    keys = table.column(id_column).to_pylist() if id_column else None
                    paths = table.column(column).to_pylist() if is_path else None
            except Exception as exc:  # a damaged page: this row group's rows are error rows, the rest goes on
                message = f"row group {group} (rows {row} to {row + size - 1}) cannot be read: {exc}"
                for i in range(size):
                    yield Item(source, str(row + i), {}, ("unreadable", message)), f"row{row + i}"
                row += size
                continue
            for i in range(size):
                key = str(keys[i]) if keys is not None else str(row)
                if paths is None:
                    item = Item(source, key, {"parquet": str(file), "group": group, "row": i, **cell})
                elif paths[i] is None:
                    item = Item(source, key, {}, ("empty", f"row {row}: null path"))
                else:
                    ref, error = file_ref(paths[i], root, root_real, self.options.allow_absolute_paths)
                    item = Item(source, key, ref, error)
                yield item, f"row{row}"
                row += 1

    # ------------------------------------------------------------------ HF datasets (save_to_disk)

    def _iter_hf(self) -> Iterator[Located]:
        # Relative cell paths start at --image-root, else at the dataset folder.
        root = Path(self.options.image_root) if self.options.image_root else self.path
        root_real = os.path.realpath(root)
        for split, ds in hf_splits(self.path):
            column = self.options.image_column or _hf_image_column(ds)
            id_column = self.options.id_column or next((c for c in _ID_COLUMNS if c in ds.column_names), None)
            ids = ds[id_column] if id_column else None
            source = self.path.name if split is None else f"{self.path.name}/{split}"
            ref: dict[str, Any] = {
                "hf": str(self.path),
                "split": split,
                "column": column,
                "root_dir": str(root),
                "root": root_real,
            }
            if self.options.allow_absolute_paths:
                ref["absolute"] = True
            for row in range(len(ds)):
                key = str(ids[row]) if ids is not None else str(row)
                yield Item(source, key, {**ref, "row": row}), f"row{row}"


def _unique(key: str, taken: set[str]) -> str:
    """``key``, or ``key~2``, ``key~3``... if a literal id of the source already has that name."""
    candidate, n = key, 1
    while candidate in taken:
        n += 1
        candidate = f"{key}~{n}"
    return candidate


def _hf_image_column(ds: Any) -> str:
    from datasets import Image as HFImage

    for name, feature in ds.features.items():
        if isinstance(feature, HFImage):
            return name
    for name in _IMAGE_COLUMNS:
        if name in ds.column_names:
            return name
    raise InputError(f"no image column in the dataset: columns are {ds.column_names}; name it with --image-column")


def _parquet_rows(file: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file).metadata.num_rows
    except Exception:
        return 1  # the one error row a corrupt file gets


def _llava_records(file: Path) -> Iterator[tuple[str, int, Any]]:
    """``(where, index, record)`` of a LLaVA file; a line or a file that cannot be parsed is a `RecordError`.

    ``where`` names the record in messages and renamed ids: ``line5`` (JSONL, 1-based) or
    ``record12`` (JSON list, 0-based, as ``index``). A JSONL record's ``index`` is its line, 0-based.
    """
    if file.suffix.lower() == ".jsonl":
        for n, value in iter_jsonl(file):
            yield f"line{n}", n - 1, value
        return
    # LLaVA instruction files are one JSON array of records (text only; images stay on disk).
    try:  # the one JSON loader: not JSON, not UTF-8 or nested too deep is a RecordError naming the file
        entries = parse_json(file.read_bytes(), str(file), error=RecordError)
    except RecordError as exc:
        yield "*", 0, exc
        return
    except OSError as exc:
        yield "*", 0, RecordError(f"{file}: not a readable JSON file ({exc})")
        return
    if not isinstance(entries, list):
        yield "*", 0, RecordError(f"{file}: expected a JSON list of LLaVA records, found a {type(entries).__name__}")
        return
    for index, entry in enumerate(entries):
        yield f"record{index}", index, entry


def _tar_items(shard: Path, source: str, account: Account) -> Iterator[Located]:
    """Image members of a webdataset shard as byte ranges, keyed as webdataset keys them.

    A member's key is its path up to the first dot of its file name (``a/b.c.jpg`` -> ``a/b``). A
    sample's first image keeps the key; any further image member of the same key (``KEY.seg.png``
    beside ``KEY.jpg``) is scanned too, keyed ``KEY.<its suffix>``; an exact duplicate member name
    is renamed ``@member<n>`` by the reader. Members that are not images (captions, metadata) are
    counted by suffix.
    """
    counts = account.of(source)
    try:
        archive = tarfile.open(shard, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield Item(source, "*", {}, ("unreadable", f"not a readable tar shard: {exc}")), None
        return
    compressed = not isinstance(archive.fileobj, io.BufferedReader)
    version = shard.stat().st_mtime_ns
    seen: dict[str, set[str]] = {}  # key -> its image fields so far
    with archive:
        members = iter(archive)
        for n in itertools.count():
            try:
                member = next(members)
            except StopIteration:
                break
            except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
                yield Item(source, f"*after{n}", {}, ("unreadable", f"tar shard damaged: {exc}")), None
                break
            if member.isdir():
                counts.not_images["(directory)"] += 1
                continue
            directory, _, base = member.name.rpartition("/")
            stem, _, ext = base.partition(".")
            if not is_image_name(base):
                counts.not_images[suffix(base)] += 1  # captions (.txt) and metadata (.json) are not scanned
                continue
            key = f"{directory}/{stem}" if directory else stem
            fields_of_key = seen.setdefault(key, set())
            field = ext.lower()
            if fields_of_key and field not in fields_of_key:  # another image of the sample: its own row
                counts.renamed["extra_image_field"] += 1
                fields_of_key.add(field)
                key = f"{key}.{ext}"
            else:  # a sample's first image, or a duplicate member name (renamed by the reader)
                fields_of_key.add(field)
            if not member.isfile():
                error = ("unreadable", f"tar member {member.name} is not a regular file")
                yield Item(source, key, {}, error), f"member{n}"
            else:
                ref = {"tar": str(shard), "offset": member.offset_data, "size": member.size}
                if compressed:
                    ref |= {"compressed": True, "version": version}
                yield Item(source, key, ref), f"member{n}"
