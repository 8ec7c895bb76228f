"""Hostile corpora: nothing read outside the root, nothing silently dropped, one bad item never stops the scan."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from safety_modules.scan import read_parts, run_scan
from safety_modules.scan.detect import detect_kind
from safety_modules.scan.readers import CorpusReader, ReaderOptions
from safety_modules.scan.report import write_report

from ..scan_corpus import add_symlink, jpegs, plain_images, write_folder, write_tar
from .test_producers import assert_accounted, scan, settings


def rows_by_id(table: pa.Table) -> dict[str, dict]:
    return {r["id"]: r for r in table.to_pylist()}


def test_a_stray_tar_in_an_image_folder_is_refused_by_name_not_scanned_instead(tiny_dir, safety_dir, tmp_path):
    folder = write_folder(tmp_path / "photos", plain_images(5))
    write_tar(folder / "stray.tar", [("x.jpg", jpegs(1)[0])])
    with pytest.raises(ValueError) as info:
        CorpusReader(folder)
    message = str(info.value)
    assert "5 image files" in message and "1 tar shards" in message and "stray.tar" in message
    assert "--reader folder" in message and "--reader wds" in message
    manifest, table = scan(tiny_dir, safety_dir, folder, tmp_path / "out", kind="folder")
    assert_accounted(manifest, table)
    assert table.num_rows == 5 and manifest["account"]["not_images"] == {".tar": 1}  # said, not hidden


def test_a_shard_with_dotted_names_and_a_duplicate_key_gives_one_row_per_image_member(tiny_dir, safety_dir, tmp_path):
    images = jpegs(21, start=600)
    names = [f"{i:03d}.jpg" for i in range(17)] + ["a.b.jpg", "photo.v2.png", "005.jpg", "dir.v1/x.seg.png"]
    shard = write_tar(tmp_path / "s.tar", list(zip(names, images)) + [("000.txt", b"caption")])
    manifest, table = scan(tiny_dir, safety_dir, shard, tmp_path / "out")
    assert_accounted(manifest, table)
    assert table.num_rows == 21
    ids = table.column("id").to_pylist()
    assert {"s.tar:a", "s.tar:photo", "s.tar:005", "s.tar:005@member19", "s.tar:dir.v1/x"} <= set(ids)
    assert manifest["account"]["renamed_ids"] == {"duplicate_id": 1}
    assert manifest["account"]["not_images"] == {".txt": 1}


def test_outside_the_root_is_refused_whether_or_not_the_target_exists(tiny_dir, safety_dir, tmp_path):
    root = write_folder(tmp_path / "corpus" / "images", plain_images(2))
    secret = write_folder(tmp_path / "corpus" / "secret", {"x.png": plain_images(1, start=7)["img_000.png"]})
    os.symlink(secret / "x.png", root / "link_out.png")  # an existing file outside, through a symlink
    os.symlink(tmp_path / "nowhere.png", root / "dangling_out.png")  # a missing one
    records = [
        {"id": "ok", "image": "img_000.png"},
        {"id": "up", "image": "../secret/x.png"},
        {"id": "up_missing", "image": "../secret/none.png"},
        {"id": "passwd", "image": "../../../../etc/passwd"},
        {"id": "absolute", "image": str(secret / "x.png")},
        {"id": "absolute_missing", "image": "/no/such/file.png"},
        {"id": "link", "image": "link_out.png"},
        {"id": "dangling", "image": "dangling_out.png"},
        {"id": "missing_inside", "image": "nope.png"},
    ]
    (tmp_path / "corpus" / "llava.json").write_text(json.dumps(records))
    llava = tmp_path / "corpus" / "llava.json"
    refused = ["up", "up_missing", "passwd", "absolute", "absolute_missing"]
    # Refused by the reader from the string alone, before any file-system access.
    items = {i.key: i for i in CorpusReader(llava, ReaderOptions(image_root=str(root)))}
    assert all(items[k].error is not None and items[k].error[0] == "outside_root" for k in refused)
    assert items["link"].error is None  # a symlink is caught when it is read, by its real path

    out = tmp_path / "out"
    manifest, table = scan(tiny_dir, safety_dir, llava, out, image_root=str(root))
    assert_accounted(manifest, table)
    rows = {i.split(":")[1]: r for i, r in rows_by_id(table).items()}
    for key in [*refused, "link", "dangling"]:
        assert rows[key]["error_kind"] == "outside_root", (key, rows[key]["error"])
        assert rows[key]["p_safe"] is None
    assert rows["ok"]["error"] is None and rows["missing_inside"]["error_kind"] == "unreadable"

    # The explicit flag reads absolute paths; '..' and escaping symlinks stay refused.
    manifest, table = scan(
        tiny_dir, safety_dir, llava, tmp_path / "out-abs", image_root=str(root), allow_absolute_paths=True
    )
    rows = {i.split(":")[1]: r for i, r in rows_by_id(table).items()}
    assert rows["absolute"]["error"] is None and rows["absolute_missing"]["error_kind"] == "unreadable"
    assert all(rows[k]["error_kind"] == "outside_root" for k in ["up", "passwd", "link", "dangling"])


def test_a_symlink_out_of_an_image_folder_is_refused(tiny_dir, safety_dir, tmp_path):
    folder = write_folder(tmp_path / "photos", plain_images(2))
    write_folder(tmp_path / "elsewhere", {"private.png": plain_images(1, start=9)["img_000.png"]})
    os.symlink(tmp_path / "elsewhere" / "private.png", folder / "private.png")
    manifest, table = scan(tiny_dir, safety_dir, folder, tmp_path / "out")
    assert_accounted(manifest, table)
    assert rows_by_id(table)["photos:private.png"]["error_kind"] == "outside_root"


def test_bad_records_and_bad_lines_are_error_rows_and_the_scan_goes_on(tiny_dir, safety_dir, tmp_path):
    root = write_folder(tmp_path / "images", plain_images(3))
    records = [
        {"id": "a", "image": "img_000.png"},
        {"id": "int", "image": 7},
        {"id": "list", "image": ["img_001.png", 3]},
        {"id": "dict", "image": {"path": "img_002.png"}},
        ["not", "a", "record"],
        {"id": "text", "conversations": []},
        {"id": "b", "image": "img_002.png"},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(records))
    manifest, table = scan(tiny_dir, safety_dir, tmp_path / "llava.json", tmp_path / "out", image_root=str(root))
    assert_accounted(manifest, table, skipped={"text_only": 1})
    rows = rows_by_id(table)
    assert [k for k, r in rows.items() if r["error"] is None] == ["llava.json:a", "llava.json:list#0", "llava.json:b"]
    assert {k: r["error_kind"] for k, r in rows.items() if r["error"]} == {
        "llava.json:int": "bad_record",
        "llava.json:list#1": "bad_record",
        "llava.json:dict": "bad_record",
        "llava.json:4": "bad_record",
    }
    assert "record1" in rows["llava.json:int"]["error"] and "int" in rows["llava.json:int"]["error"]

    lines = [json.dumps({"id": f"r{i}", "image": f"img_00{i % 3}.png"}) for i in range(6)]
    lines[4] = '{"id": "r4", "image": '  # line 5 is cut short
    (tmp_path / "llava.jsonl").write_text("\n".join(lines) + "\n")
    manifest, table = scan(tiny_dir, safety_dir, tmp_path / "llava.jsonl", tmp_path / "out-l", image_root=str(root))
    assert_accounted(manifest, table)
    rows = rows_by_id(table)
    assert rows["llava.jsonl:line5"]["error_kind"] == "bad_record"
    assert rows["llava.jsonl:line5"]["error"].startswith(f"bad_record: {tmp_path / 'llava.jsonl'}:5: not valid JSON")
    assert sum(r["error"] is None for r in rows.values()) == 5

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.json").write_text("[{")
    (tmp_path / "broken" / "b.json").write_text(json.dumps([{"id": "fine", "image": "img_000.png"}]))
    manifest, table = scan(tiny_dir, safety_dir, tmp_path / "broken", tmp_path / "out-b", image_root=str(root))
    assert_accounted(manifest, table)
    assert rows_by_id(table)["a.json:*"]["error_kind"] == "bad_record"
    assert rows_by_id(table)["b.json:fine"]["error"] is None


def test_a_deeply_nested_llava_file_or_line_is_a_bad_record_not_a_crash(tiny_dir, safety_dir, tmp_path):
    """100,000 opening brackets (json.loads raises RecursionError, which is no ValueError) in a JSON file and in one
    JSONL line: each is one bad_record row and the other files and lines are scanned."""
    root = write_folder(tmp_path / "images", plain_images(2))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (corpus / "fine.json").write_text(json.dumps([{"id": "ok", "image": "img_000.png"}]))
    lines = [json.dumps({"id": "first", "image": "img_001.png"}), "[" * 100_000 + "]" * 100_000]
    (corpus / "lines.jsonl").write_text("\n".join(lines) + "\n")
    manifest, table = scan(tiny_dir, safety_dir, corpus, tmp_path / "out", image_root=str(root))
    assert_accounted(manifest, table)
    rows = rows_by_id(table)
    assert rows["deep.json:*"]["error_kind"] == "bad_record" and "nested deeper" in rows["deep.json:*"]["error"]
    assert rows["lines.jsonl:line2"]["error_kind"] == "bad_record"
    assert rows["fine.json:ok"]["error"] is None and rows["lines.jsonl:first"]["error"] is None


def _damage_column_chunk(path, group: int, column: int) -> None:
    """Overwrite the first page header of one column chunk with garbage (a damaged page)."""
    meta = pq.ParquetFile(path).metadata.row_group(group).column(column)
    data = bytearray(path.read_bytes())
    start = meta.dictionary_page_offset or meta.data_page_offset
    data[start : start + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))


def test_a_damaged_parquet_page_makes_error_rows_of_its_row_group_only(tiny_dir, safety_dir, tmp_path):
    images = jpegs(6, start=700)
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": [f"i{i}" for i in range(6)], "jpg": images}), path, row_group_size=2)
    _damage_column_chunk(path, 1, 0)  # the id column of rows 2-3
    manifest, table = scan(tiny_dir, safety_dir, path, tmp_path / "out")
    assert_accounted(manifest, table)
    rows = rows_by_id(table)
    assert [k for k, r in rows.items() if r["error"] is None] == [
        "d.parquet:i0",
        "d.parquet:i1",
        "d.parquet:i4",
        "d.parquet:i5",
    ]
    assert rows["d.parquet:2"]["error_kind"] == rows["d.parquet:3"]["error_kind"] == "unreadable"
    assert "row group 1 (rows 2 to 3)" in rows["d.parquet:2"]["error"]

    _damage_column_chunk(path, 2, 1)  # now the image column of rows 4-5 too
    manifest, table = scan(tiny_dir, safety_dir, path, tmp_path / "out2")
    assert_accounted(manifest, table)
    assert [r["error"] is None for r in table.to_pylist()] == [True, True, False, False, False, False]


def test_empty_bytes_in_an_hf_cell_are_an_empty_image_never_the_file_its_path_names(tiny_dir, safety_dir, tmp_path):
    good = jpegs(1, start=800)[0]
    (tmp_path / "x.jpg").write_bytes(good)  # a valid image under the cell's path, next to the parquet
    cells = pa.array(
        [{"bytes": b"", "path": "x.jpg"}, {"bytes": good, "path": "x.jpg"}, {"bytes": None, "path": "x.jpg"}],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    pq.write_table(pa.table({"image": cells}), tmp_path / "cells.parquet")
    manifest, table = scan(tiny_dir, safety_dir, tmp_path / "cells.parquet", tmp_path / "out")
    assert_accounted(manifest, table)
    kinds = table.column("error_kind").to_pylist()
    assert kinds == ["empty", None, None]  # the path is read only when there are no bytes at all


def test_a_tar_gz_shard_is_read_and_a_cut_one_gives_error_rows(tiny_dir, safety_dir, tmp_path):
    import gzip
    import io
    import tarfile

    images = jpegs(3, start=950)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i, data in enumerate(images):
            info = tarfile.TarInfo(f"{i:03d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "a.tgz").write_bytes(gzip.compress(buffer.getvalue()))
    whole = gzip.compress(buffer.getvalue())
    (tmp_path / "shards" / "b.tar.gz").write_bytes(whole[: len(whole) * 2 // 3])
    assert detect_kind(tmp_path / "shards") == "wds"
    manifest, table = scan(tiny_dir, safety_dir, tmp_path / "shards", tmp_path / "out")
    assert_accounted(manifest, table)
    rows = rows_by_id(table)
    assert all(rows[f"a.tgz:{i:03d}"]["error"] is None for i in range(3))
    broken = {k: r for k, r in rows.items() if k.startswith("b.tar.gz:")}
    assert broken and any(r["error_kind"] in ("unreadable", "truncated") for r in broken.values())


def test_symlink_and_unreadable_tar_members_are_rows(tiny_dir, safety_dir, tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("000.jpg", jpegs(1)[0])])
    add_symlink(shard, "001.jpg", "/etc/passwd")
    manifest, table = scan(tiny_dir, safety_dir, shard, tmp_path / "out")
    assert_accounted(manifest, table)
    assert rows_by_id(table)["s.tar:001"]["error_kind"] == "unreadable"


def test_layouts_are_detected_by_content_and_input_errors_speak_of_the_input(tmp_path):
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    pq.write_table(pa.table({"image": [b"x"]}), hub / "train-00000-of-00001.parquet")
    assert detect_kind(tmp_path / "hub") == "parquet"
    hive = tmp_path / "hive" / "split=train"
    hive.mkdir(parents=True)
    pq.write_table(pa.table({"jpg": [b"x"]}), hive / "part-0.parquet")
    assert detect_kind(tmp_path / "hive") == "parquet"
    (tmp_path / "only_json").mkdir()
    (tmp_path / "only_json" / "a.jsonl").write_text("{}\n")
    assert detect_kind(tmp_path / "only_json") == "llava"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"the input .*empty holds no images.*1 \.txt"):
        CorpusReader(tmp_path / "empty")
    mixed = write_folder(tmp_path / "mixed", plain_images(1))
    pq.write_table(pa.table({"jpg": [b"x"]}), mixed / "table.parquet")
    with pytest.raises(ValueError, match="--reader folder or --reader parquet"):
        CorpusReader(mixed)


def test_only_text_records_make_a_complete_scan_with_no_rows(tiny_dir, safety_dir, tmp_path):
    (tmp_path / "text.json").write_text(json.dumps([{"id": "t", "conversations": []}] * 3))
    manifest = run_scan(tmp_path / "text.json", tmp_path / "out", settings(tiny_dir, safety_dir), progress=False)
    assert manifest["complete"] and manifest["account"]["skipped_by_reason"] == {"text_only": 3}
    assert manifest["counts"]["items"] == 0


def test_non_finite_scores_are_error_rows_never_clean(tiny_dir, safety_dir, tmp_path, capsys):
    from safety_modules.cli import main
    from safety_modules.modeling import SafetyModules

    nan_dir = tmp_path / "nan_safety"
    modules = SafetyModules.from_pretrained(safety_dir)
    with torch.no_grad():
        modules.head.level_classifier.bias.fill_(float("nan"))
    modules.save_pretrained(nan_dir)
    folder = write_folder(tmp_path / "photos", plain_images(3))
    out = tmp_path / "out"
    manifest = run_scan(folder, out, settings(tiny_dir, nan_dir), progress=False)
    table = read_parts(out)
    assert table.column("error_kind").to_pylist() == ["non_finite"] * 3
    assert table.column("flagged").null_count == 3 and manifest["counts"]["scored"] == 0
    clean = tmp_path / "clean.txt"
    write_report(out, export_clean=clean)
    assert clean.read_text() == ""
    json.loads((out / "manifest.json").read_text(), parse_constant=lambda name: pytest.fail(f"bare {name}"))

    capsys.readouterr()
    image = folder / "img_000.png"
    code = main(["assess", str(image), "--base", str(tiny_dir), "--safety", str(nan_dir), "--json"])
    printed = capsys.readouterr().out
    assert code == 0
    answer = json.loads(printed, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON output"))
    assert set(answer["levels"].values()) == {None} and answer["error"].startswith("non_finite")


def test_an_item_that_no_part_holds_makes_the_scan_incomplete_and_says_so(tiny_dir, safety_dir, tmp_path, capsys):
    from safety_modules.cli import main

    corpus = write_folder(tmp_path / "c", plain_images(7))
    command = ["scan", str(corpus), "--base", str(tiny_dir), "--safety", str(safety_dir)]
    command += ["--out", str(tmp_path / "out"), "--workers", "0", "--part-size", "3", "--no-progress"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "account: 7 seen = 7 rows + 0 skipped" in printed and "complete: every item seen" in printed
    # An image added where a finished part already stands: the resumed scan cannot place it, and says so.
    write_folder(corpus, {"img_002b.png": plain_images(1, start=40)["img_000.png"]})
    assert main(command) == 1
    printed = capsys.readouterr().out
    assert "c: 8 seen, 7 scored" in printed and "1 MISSING" in printed and "INCOMPLETE: 1 items have no row" in printed
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert not manifest["complete"] and manifest["account"]["by_source"]["c"]["missing_rows"] == 1


@pytest.mark.parametrize(
    "manifest", ["{not json", "[" * 100_000 + "]" * 100_000, "[1, 2]"], ids=["garbage", "deep", "list"]
)
def test_a_damaged_manifest_in_the_output_folder_is_one_line_not_a_traceback(
    tiny_dir, safety_dir, tmp_path, capsys, manifest
):
    from safety_modules.cli import main

    root = write_folder(tmp_path / "images", plain_images(2))
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(manifest)
    capsys.readouterr()
    for command in (
        ["scan", str(root), "--base", str(tiny_dir), "--safety", str(safety_dir), "--out", str(out), "--workers", "0"],
        ["scan-report", str(out)],
    ):
        assert main(command) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert "manifest.json" in line, line
