"""Corpora written by the tools our users use, scanned: every item accounted for, ids traceable,
and the same bytes scored the same whichever reader reads them.

Producers: webdataset's `ShardWriter`/`TarWriter` (plain and gzipped shards), HF `datasets`
(`cast_column(Image())` + `save_to_disk` / `to_parquet`), pyarrow `write_dataset` with hive
partitioning, a mix665k-shaped LLaVA JSON, and img2dataset's three output layouts.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from safety_modules.scan import ScanSettings, read_parts, run_scan
from safety_modules.scan.readers import CorpusReader
from safety_modules.scan.report import write_report

from ..scan_corpus import img2dataset_output, jpegs, write_folder


def settings(tiny_dir, safety_dir, **kw) -> ScanSettings:
    return ScanSettings(base=str(tiny_dir), safety=str(safety_dir), **{"workers": 0, "batch_size": 8, **kw})


def scan(tiny_dir, safety_dir, corpus, out, **options):
    from safety_modules.scan.readers import ReaderOptions

    manifest = run_scan(corpus, out, settings(tiny_dir, safety_dir), ReaderOptions(**options), progress=False)
    return manifest, read_parts(out)


def assert_accounted(manifest: dict, table: pa.Table, skipped: dict[str, int] | None = None) -> None:
    """Items in = rows + counted skips, one row per id, every id naming its row's source."""
    account = manifest["account"]
    assert manifest["complete"] and account["missing_rows"] == 0
    assert account["rows"] == table.num_rows == manifest["counts"]["items"]
    assert account["seen"] == account["rows"] + account["skipped"]
    assert account["skipped_by_reason"] == (skipped or {})
    ids, sources = table.column("id").to_pylist(), table.column("source").to_pylist()
    assert len(set(ids)) == len(ids), "ids are not unique"
    assert all(i.startswith(f"{s}:") for i, s in zip(ids, sources))
    for name, entry in account["by_source"].items():
        assert entry["seen"] == entry["rows"] + sum(entry["skipped_by_reason"].values()), name
        assert entry["rows"] == sum(1 for s in sources if s == name), name


def scores_by(table: pa.Table, key) -> dict[str, np.ndarray]:
    """The probabilities of every scored row, by ``key(id)``."""
    names = [c for c in table.column_names if c.startswith("p_")]
    values = np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in names], 1).astype(np.float64)
    return {
        key(i): v
        for i, v, e in zip(table.column("id").to_pylist(), values, table.column("error").to_pylist())
        if e is None
    }


def assert_same_scores(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b) and a
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def reference(tiny_dir, safety_dir, tmp_path_factory):
    """The images as a plain folder (``k0.jpg`` ...), and their scores: what every other reader must match."""
    work = tmp_path_factory.mktemp("reference")
    images = jpegs(6)
    folder = write_folder(work / "plain", {f"k{i}.jpg": data for i, data in enumerate(images)})
    manifest, table = scan(tiny_dir, safety_dir, folder, work / "out")
    assert_accounted(manifest, table)
    return images, scores_by(table, lambda i: i.split(":")[1].removesuffix(".jpg"))


def test_webdataset_shardwriter_plain_and_gzipped_shards_with_a_second_image_field(
    tiny_dir, safety_dir, tmp_path, reference
):
    import webdataset as wds

    images, expected = reference
    segment = jpegs(1, start=900)[0]
    shards = tmp_path / "shards"
    shards.mkdir()
    with wds.ShardWriter(str(shards / "train-%04d.tar"), maxcount=2) as sink:
        for i, data in enumerate(images[:4]):
            sample = {"__key__": f"k{i}", "jpg": data, "txt": f"caption {i}", "json": {"i": i}}
            if i == 1:
                sample["seg.png"] = segment  # a second image field: scanned too, under its own id
            sink.write(sample)
    with wds.TarWriter(str(shards / "extra.tar.gz")) as sink:  # gzipped by its name, as webdataset does
        for i, data in enumerate(images[4:], start=4):
            sink.write({"__key__": f"k{i}", "jpg": data, "cls": i})
    assert CorpusReader(shards).kind == "wds"
    manifest, table = scan(tiny_dir, safety_dir, shards, tmp_path / "out")
    assert_accounted(manifest, table)
    ids = table.column("id").to_pylist()
    assert ids == [
        "extra.tar.gz:k4",
        "extra.tar.gz:k5",
        "train-0000.tar:k0",
        "train-0000.tar:k1",
        "train-0000.tar:k1.seg.png",
        "train-0001.tar:k2",
        "train-0001.tar:k3",
    ]
    assert table.column("error").null_count == len(ids)
    assert manifest["account"]["renamed_ids"] == {"extra_image_field": 1}
    assert manifest["account"]["not_images"] == {".cls": 2, ".json": 4, ".txt": 4}
    # Our keys are webdataset's own: its reader yields the same samples under the same keys.
    theirs = {s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in shards.iterdir()), shardshuffle=False)}
    assert theirs == {i.split(":")[1].split(".")[0] for i in ids}
    scored = scores_by(table, lambda i: i.split(":")[1])
    assert scored.pop("k1.seg.png") is not None  # the second image field was scored
    assert_same_scores(scored, expected)


def test_hf_datasets_cast_column_image_save_to_disk_and_to_parquet(tiny_dir, safety_dir, tmp_path, reference):
    import datasets

    images, expected = reference
    files = write_folder(tmp_path / "src", {f"k{i}.jpg": data for i, data in enumerate(images)})
    ds = datasets.Dataset.from_dict(
        {"image": [str(files / f"k{i}.jpg") for i in range(len(images))], "id": [f"k{i}" for i in range(len(images))]}
    ).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "disk"))  # embeds the bytes
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train.parquet"))  # keeps {bytes: None, path: <absolute path>}

    manifest, table = scan(tiny_dir, safety_dir, tmp_path / "disk", tmp_path / "out-disk")
    assert manifest["settings"]["input"]["reader"] == "hf"
    assert_accounted(manifest, table)
    assert_same_scores(scores_by(table, lambda i: i.split(":")[1]), expected)

    # The parquet names absolute paths on the writer's machine: refused unless asked for, by one error kind.
    manifest, table = scan(tiny_dir, safety_dir, tmp_path / "pq", tmp_path / "out-pq")
    assert_accounted(manifest, table)
    assert manifest["account"]["errors_by_kind"] == {"outside_root": len(images)}
    manifest, table = scan(tiny_dir, safety_dir, tmp_path / "pq", tmp_path / "out-pq-abs", allow_absolute_paths=True)
    assert_accounted(manifest, table)
    assert manifest["settings"]["input"]["allow_absolute_paths"] is True
    assert_same_scores(scores_by(table, lambda i: i.split(":")[1]), expected)


def test_pyarrow_hive_partitions_and_a_hub_data_folder(tiny_dir, safety_dir, tmp_path, reference):
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    images, expected = reference
    table = pa.table({"key": [f"k{i}" for i in range(6)], "jpg": images, "split": ["train"] * 4 + ["test"] * 2})
    ds.write_dataset(table, tmp_path / "hive", format="parquet", partitioning=["split"], partitioning_flavor="hive")
    manifest, rows = scan(tiny_dir, safety_dir, tmp_path / "hive", tmp_path / "out-hive")
    assert manifest["settings"]["input"]["reader"] == "parquet"
    assert_accounted(manifest, rows)
    # The partition values are in each row, in its source (the file under split=<value>/).
    assert sorted(set(rows.column("source").to_pylist())) == ["split=test/part-0.parquet", "split=train/part-0.parquet"]
    assert rows.column("id").to_pylist()[0] == "split=test/part-0.parquet:k4"
    assert_same_scores(scores_by(rows, lambda i: i.split(":")[1]), expected)

    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    (hub / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n")
    struct = pa.array([{"bytes": b, "path": f"k{i}.jpg"} for i, b in enumerate(images)])
    pq.write_table(pa.table({"image": struct}), hub / "data" / "train-00000-of-00001.parquet")
    manifest, rows = scan(tiny_dir, safety_dir, hub, tmp_path / "out-hub")
    assert manifest["settings"]["input"]["reader"] == "parquet"
    assert_accounted(manifest, rows)
    assert manifest["account"]["not_images"] == {".md": 1}
    assert rows.column("id").to_pylist()[0] == "data/train-00000-of-00001.parquet:0"
    assert_same_scores(scores_by(rows, lambda i: f"k{i.split(':')[1]}"), expected)


def test_mix665k_shaped_json_counts_text_only_records_and_tells_colliding_ids_apart(tiny_dir, safety_dir, tmp_path):
    images = jpegs(4, start=500)
    root = write_folder(
        tmp_path / "data",
        {
            "coco/train2017/000000033471.jpg": images[0],
            "gqa/images/2354786.jpg": images[1],
            "vg/VG_100K/2354786.jpg": images[2],
            "textvqa/train_images/0a0bc91825468c45.jpg": images[3],
        },
    )
    turn = [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A photo."}]
    text = [{"from": "human", "value": "Write a poem."}, {"from": "gpt", "value": "Roses..."}]
    records = [
        {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": turn},
        {"id": "i6IyJda_0", "model": "", "conversations": text},  # ShareGPT: text only
        {"id": "2354786", "image": "gqa/images/2354786.jpg", "conversations": turn},
        {"id": "oU1kc9e_0", "conversations": text},
        {"id": "2354786", "image": "vg/VG_100K/2354786.jpg", "conversations": turn},  # the GQA image's VG twin
        {"id": "0a0bc91825468c45", "image": "textvqa/train_images/0a0bc91825468c45.jpg", "conversations": turn},
        {"id": "x1", "image": None, "conversations": text},
    ]
    (tmp_path / "llava_v1_5_mix665k.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    manifest, table = scan(tiny_dir, safety_dir, tmp_path / "llava_v1_5_mix665k.json", out, image_root=str(root))
    assert_accounted(manifest, table, skipped={"text_only": 3})
    assert manifest["account"]["seen"] == len(records)
    assert manifest["account"]["renamed_ids"] == {"duplicate_id": 1}
    assert table.column("id").to_pylist() == [
        "llava_v1_5_mix665k.json:000000033471",
        "llava_v1_5_mix665k.json:2354786",
        "llava_v1_5_mix665k.json:2354786@record4",  # traceable: record 4 of the file
        "llava_v1_5_mix665k.json:0a0bc91825468c45",
    ]
    clean, flagged = tmp_path / "clean.txt", tmp_path / "flagged.txt"
    write_report(out, export_clean=clean, export_flagged=flagged)
    exported = clean.read_text().split() + flagged.read_text().split()
    assert sorted(exported) == sorted(table.column("id").to_pylist())  # each row named once, unambiguously


@pytest.mark.parametrize("output_format", ["files", "webdataset", "parquet"])
def test_img2dataset_output_layouts(tiny_dir, safety_dir, tmp_path, reference, output_format):
    images, expected = reference
    corpus = tmp_path / "laion"
    keys = img2dataset_output(corpus, output_format, [*images[:3], None, *images[3:]])
    by_key = {key: f"k{i}" for key, i in zip([k for k in keys if k != "000000003"], range(6))}
    reader = {"files": "folder", "webdataset": "wds", "parquet": "parquet"}[output_format]
    assert CorpusReader(corpus).kind == reader
    manifest, table = scan(tiny_dir, safety_dir, corpus, tmp_path / "out")
    assert_accounted(manifest, table)
    ids = table.column("id").to_pylist()
    shard = {"files": "{}", "webdataset": "{}.tar", "parquet": "{}.parquet"}[output_format]
    written = [k for k in keys if output_format == "parquet" or k != "000000003"]
    assert ids == [f"{shard.format(k[:5])}:{k}" for k in written]  # img2dataset's own keys
    if output_format == "parquet":  # the failed download is a row with no image
        assert manifest["account"]["errors_by_kind"] == {"empty": 1}
    assert_same_scores(scores_by(table, lambda i: by_key.get(i.split(":")[1], "failed")), expected)
    not_read = manifest["account"]["not_images"]
    assert not_read[".json"] >= 2  # the _stats.json files at least: counted, not silently passed over
