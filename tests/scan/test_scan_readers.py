"""The five corpus readers: detection, stable ids, streaming references, broken containers."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from safety_modules.images import ImageDecodeError, decode_image
from safety_modules.scan.readers import CorpusReader, ItemError, ReaderOptions, detect_kind, load_bytes

from ..scan_corpus import _rgb, add_symlink, encode, plain_images, wds_samples, write_folder, write_tar


def ids(reader: CorpusReader) -> list[str]:
    return [item.id for item in reader]


def decodes(item) -> bool:
    try:
        decode_image(load_bytes(item))
        return True
    except (ItemError, ImageDecodeError):
        return False


def test_folder_reader_recursive_sorted_and_stable(tmp_path):
    files = {**plain_images(3), "sub/deeper/x.jpg": encode(_rgb(1), "JPEG"), "notes.txt": b"not scanned"}
    root = write_folder(tmp_path / "photos", files)
    reader = CorpusReader(root)
    assert reader.kind == "folder"
    first = ids(reader)
    assert first == ["photos:img_000.png", "photos:img_001.png", "photos:img_002.png", "photos:sub/deeper/x.jpg"]
    assert ids(CorpusReader(root)) == first and reader.count() == 4
    assert all(decodes(item) for item in reader)


def test_llava_json_and_jsonl(tmp_path):
    images = write_folder(tmp_path / "coco", plain_images(3))
    entries = [
        {"id": "a1", "image": "img_000.png", "conversations": []},
        {"id": "text_only", "conversations": []},
        {"id": "multi", "image": ["img_001.png", "img_002.png"]},
        {"id": "gone", "image": "missing.png"},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(entries))
    (tmp_path / "llava.jsonl").write_text("\n".join(json.dumps(e) for e in entries[:1]) + "\n")
    options = ReaderOptions(image_root=str(images))
    reader = CorpusReader(tmp_path / "llava.json", options)
    assert reader.kind == "llava"
    items = list(reader)
    assert [i.id for i in items] == ["llava.json:a1", "llava.json:multi#0", "llava.json:multi#1", "llava.json:gone"]
    assert [decodes(i) for i in items] == [True, True, True, False]
    with pytest.raises(ImageDecodeError) as missing:  # found by the worker that reads it, not by the reader
        decode_image(load_bytes(items[-1]))
    assert missing.value.kind == "unreadable" and "missing.png" in str(missing.value)
    assert ids(CorpusReader(tmp_path / "llava.json", options)) == [i.id for i in items]
    assert ids(CorpusReader(tmp_path / "llava.jsonl", options)) == ["llava.jsonl:a1"]


def test_webdataset_shards(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "00000.tar", wds_samples(3, start=0))
    write_tar(shards / "00001.tar", wds_samples(2, start=3))
    reader = CorpusReader(shards)
    assert reader.kind == "wds"
    first = ids(reader)
    assert first == [f"0000{s}.tar:{k:09d}" for s, k in [(0, 0), (0, 1), (0, 2), (1, 3), (1, 4)]]
    assert ids(CorpusReader(shards)) == first and reader.count() == 5
    assert all(decodes(item) for item in reader)


def test_webdataset_broken_members(tmp_path):
    shard = write_tar(tmp_path / "bad.tar", wds_samples(2) + [("000000009.png", b"garbage bytes")])
    add_symlink(shard, "000000010.jpg", "/etc/passwd")
    (tmp_path / "notatar.tar").write_bytes(b"hello")
    items = list(CorpusReader(tmp_path, ReaderOptions(kind="wds")))
    by_id = {i.id: i for i in items}
    assert decodes(by_id["bad.tar:000000000"]) and not decodes(by_id["bad.tar:000000009"])
    assert by_id["bad.tar:000000010"].error[0] == "unreadable"  # a symlink member is not an image
    assert by_id["notatar.tar:*"].error[0] == "unreadable"
    # A shard cut in the middle of a member: the member reads as truncated, nothing is lost silently.
    cut = tmp_path / "cut" / "cut.tar"
    cut.parent.mkdir()
    write_tar(cut, wds_samples(2))
    data = cut.read_bytes()
    last = list(CorpusReader(cut))[-1]
    cut.write_bytes(data[: last.ref["offset"] + last.ref["size"] // 2])
    items = list(CorpusReader(cut))
    assert [i.key for i in items][:2] == ["000000000", "000000001"]
    with pytest.raises((ItemError, ImageDecodeError)) as info:
        decode_image(load_bytes(items[1]))
    assert info.value.kind == "truncated"


def test_parquet_bytes_structs_paths_and_bad_cells(tmp_path):
    good = [encode(_rgb(i), "PNG") for i in range(3)]
    pq.write_table(
        pa.table({"key": ["k0", "k1", "k2", "k3"], "jpg": good[:2] + [None, b"not an image"]}),
        tmp_path / "a.parquet",
        row_group_size=2,
    )
    struct = pa.array([{"bytes": good[2], "path": None}], pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": struct}), tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_bytes(b"PAR1 broken")
    reader = CorpusReader(tmp_path)
    assert reader.kind == "parquet"
    items = list(reader)
    assert [i.id for i in items] == [
        "a.parquet:k0",
        "a.parquet:k1",
        "a.parquet:k2",
        "a.parquet:k3",
        "b.parquet:0",
        "c.parquet:*",
    ]
    assert [decodes(i) for i in items] == [True, True, False, False, True, False]
    with pytest.raises(ItemError) as info:
        load_bytes(items[2])
    assert info.value.kind == "empty"
    assert items[-1].error[0] == "unreadable"
    assert ids(CorpusReader(tmp_path)) == [i.id for i in items] and reader.count() == 6


def test_parquet_path_column(tmp_path):
    write_folder(tmp_path / "imgs", plain_images(2))
    pq.write_table(
        pa.table({"id": ["x", "y"], "image_path": ["imgs/img_000.png", "imgs/img_001.png"]}), tmp_path / "p.parquet"
    )
    items = list(CorpusReader(tmp_path / "p.parquet"))
    assert [i.id for i in items] == ["p.parquet:x", "p.parquet:y"] and all(decodes(i) for i in items)


def test_hf_datasets_saved_to_disk(tmp_path):
    pytest.importorskip("datasets", reason="the [scan] extra's datasets is not installed")
    from datasets import Dataset, DatasetDict, Features, Image, Value

    features = Features({"image": Image(), "uid": Value("string")})
    rows = {"image": [{"bytes": encode(_rgb(i), "PNG"), "path": None} for i in range(3)], "uid": ["u0", "u1", "u2"]}
    Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "single"))
    reader = CorpusReader(tmp_path / "single")
    assert reader.kind == "hf" and reader.count() == 3
    assert ids(reader) == ["single:u0", "single:u1", "single:u2"] == ids(CorpusReader(tmp_path / "single"))
    assert all(decodes(i) for i in reader)

    split = Dataset.from_dict({"img": [encode(_rgb(9), "PNG")]})  # a plain binary column
    DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "dict"))
    items = list(CorpusReader(tmp_path / "dict", ReaderOptions(image_column="img")))
    assert [i.id for i in items] == ["dict/test:0", "dict/train:0"] and all(decodes(i) for i in items)


def test_detection_and_errors(tmp_path):
    assert detect_kind(write_folder(tmp_path / "f", plain_images(1))) == "folder"
    with pytest.raises(FileNotFoundError):
        CorpusReader(tmp_path / "missing")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="--reader"):
        CorpusReader(tmp_path / "x.csv")
    with pytest.raises(ValueError, match="unknown reader"):
        CorpusReader(tmp_path / "f", ReaderOptions(kind="zip"))
