"""The RL alignment split of UnsafeConcepts: per-concept 80/20 (1,222 / 345 on the real counts), safe images, CLI."""

from __future__ import annotations

import json
from pathlib import Path

from safety_modules.cli import main
from safety_modules.data import unsafe_concepts as uc
from safety_modules.data import unsafe_concepts_split as split
from safety_modules.data.format import read_records
from tests.benchmark_fixtures import UC_ROWS, image_bytes, write_safervlm_layout

TAXONOMY = Path("/work/shared/data/unsafe_concepts_taxonomy.json")


def published_items() -> list[uc.UnsafeConceptItem]:
    """Items with the published per-concept image counts (benchmarks B.2), no images needed for the split."""
    counts = (
        [
            (c["concept"], c["images"], cat["category"])
            for cat in json.loads(TAXONOMY.read_text())["categories"]
            for c in cat["concepts"]
        ]
        if TAXONOMY.exists()
        else [("Swastika", 13, "Hate"), ("Celtic Cross", 1, "Hate"), ("Gun violence", 50, "Violence")]
    )
    items = []
    for concept, n, category in counts:
        items += [uc.UnsafeConceptItem(len(items) + k, category, concept) for k in range(n)]
    return items


def test_split_counts_match_the_paper():
    items = published_items()
    train, test = split.split_per_concept(items)
    if len(items) == 1567:
        assert (len(train), len(test)) == (1222, 345)
    assert {it.index for it in train}.isdisjoint({it.index for it in test})
    assert len(train) + len(test) == len(items)
    for concept in {it.concept for it in items}:
        n = sum(it.concept == concept for it in items)
        assert sum(it.concept == concept for it in train) == n * 4 // 5
    again, _ = split.split_per_concept(items)
    other, _ = split.split_per_concept(items, seed=1)
    assert [it.index for it in again] == [it.index for it in train]  # seeded
    assert [it.index for it in other] != [it.index for it in train]


def write_safe_folder(root: Path, n: int) -> Path:
    for i in range(n):
        folder = root / ("goldfish" if i % 2 else "tabby cat")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(image_bytes(500 + i, fmt="PNG"))
    return root


def test_cli_writes_the_rl_split(tmp_path):
    data = write_safervlm_layout(tmp_path / "uc")
    safe = write_safe_folder(tmp_path / "imagenet", 30)  # 24 train / 6 test after the 80/20 cut
    out = tmp_path / "rl" / "train.jsonl"
    assert (
        main(
            [
                "data",
                "convert",
                "unsafe-concepts",
                str(data),
                "--split",
                "train",
                "--safe-images",
                str(safe),
                "--out",
                str(out),
                "--seed",
                "3",
            ]
        )
        == 1  # an empty training file is an error, not a success
    )
    records = read_records(out)
    unsafe = [r for r in records if r["alignment_label"] == "Unsafe"]
    safe_records = [r for r in records if r["alignment_label"] == "Safe"]
    # 6 concepts with one image each: floor(0.8) = 0 train images each, so no unsafe (and no safe) train record
    assert len(unsafe) == sum(n * 4 // 5 for n in [1] * len(UC_ROWS)) == 0
    assert len(safe_records) == len(unsafe)
    test_out = tmp_path / "rl" / "test.jsonl"
    assert (
        main(
            [
                "data",
                "convert",
                "unsafe-concepts",
                str(data),
                "--split",
                "test",
                "--safe-images",
                str(safe),
                "--out",
                str(test_out),
            ]
        )
        == 0
    )
    test = read_records(test_out)
    assert sum(r["alignment_label"] == "Unsafe" for r in test) == len(UC_ROWS)
    assert sum(r["alignment_label"] == "Safe" for r in test) == len(UC_ROWS)  # truncated to the unsafe count
    for r in test:
        question = r["conversations"][0]["value"].removeprefix("<image>\n")
        assert question in uc.ALIGNMENT_PROMPTS
        assert r["conversations"][1]["value"] == ""
        assert (r["safety"]["level"] == 0) == (r["alignment_label"] == "Safe")
        assert (test_out.parent / r["image"]).is_file()
    assert {r["concept"] for r in test if r["alignment_label"] == "Safe"} <= {"goldfish", "tabby cat"}
    assert split.alignment_label(test[0]) == test[0]["alignment_label"]
    unsafe_test = [r for r in test if r["alignment_label"] == "Unsafe"]
    assert {r["unsafe_concept"] for r in unsafe_test} == {k for _, k in UC_ROWS}  # verbatim, for text-only prompts
    assert all(r["concept"] == r["unsafe_concept"].lower() for r in unsafe_test)


def test_split_with_more_images_per_concept_and_seeded_prompts(tmp_path):
    root = tmp_path / "uc" / "UnsafeConcepts"
    (root / "images").mkdir(parents=True)
    rows = [("Hate", "Swastika")] * 10 + [("Violence", "Gun violence")] * 5
    (root / "metadata.jsonl").write_text(
        "".join(
            json.dumps({"image_filename": f"images/{i}.png", "category": c, "unsafe_concept": k}) + "\n"
            for i, (c, k) in enumerate(rows)
        )
    )
    for i in range(len(rows)):
        (root / "images" / f"{i}.png").write_bytes(image_bytes(i, fmt="PNG"))
    safe = write_safe_folder(tmp_path / "safe", 30)
    a = split.alignment_split_records(tmp_path / "uc", tmp_path / "out", "train", safe, seed=5)
    b = split.alignment_split_records(tmp_path / "uc", tmp_path / "out", "train", safe, seed=5)
    c = split.alignment_split_records(tmp_path / "uc", tmp_path / "out", "train", safe, seed=6)
    assert a == b and [r["conversations"] for r in a] != [r["conversations"] for r in c]
    assert sum(r["alignment_label"] == "Unsafe" for r in a) == 8 + 4
    assert sum(r["alignment_label"] == "Safe" for r in a) == 12
    test = split.alignment_split_records(tmp_path / "uc", tmp_path / "out", "test", safe)
    assert {r["id"] for r in test}.isdisjoint({r["id"] for r in a})


def test_safe_folder_layouts(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "golden_retriever.png").write_bytes(image_bytes(1, fmt="PNG"))
    assert [s.concept for s in split.load_safe_images(flat)] == ["golden retriever"]
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "0.png").write_bytes(image_bytes(2, fmt="PNG"))
    (meta / "metadata.json").write_text(json.dumps([{"image_filename": "0.png", "concept": "Tench"}]))
    assert [(s.path.name, s.concept) for s in split.load_safe_images(meta)] == [("0.png", "Tench")]
    (tmp_path / "empty").mkdir()
    import pytest

    with pytest.raises(ValueError, match="no images"):
        split.load_safe_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        split.load_safe_images(tmp_path / "missing")


def test_rl_samples_skip_broken_images(tmp_path, caplog):
    from safety_modules.data.format import make_record, write_records
    from safety_modules.training.config import DataFile
    from safety_modules.training.rl.data import load_samples

    (tmp_path / "ok.png").write_bytes(image_bytes(1, fmt="PNG"))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    records = [
        make_record("a", "ok.png", uc.ALIGNMENT_PROMPTS[0], "", 0, "safe"),
        {**make_record("b", "broken.png", uc.ALIGNMENT_PROMPTS[1], "", 3, "illegal_risk"), "alignment_label": "Unsafe"},
    ]
    write_records(records, tmp_path / "rl.jsonl")
    samples = load_samples([DataFile(str(tmp_path / "rl.jsonl"))])
    assert [(s.id, s.label, s.prompt) for s in samples] == [("a", "Safe", uc.ALIGNMENT_PROMPTS[0])]
    assert "broken.png" in caplog.text
    write_records(records[1:], tmp_path / "bad.jsonl")
    import pytest

    with pytest.raises(ValueError, match="no usable records"):
        load_samples([DataFile(str(tmp_path / "bad.jsonl"))])
