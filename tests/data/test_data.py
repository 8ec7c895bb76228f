"""Training data: record format, collator masking, converters on published layouts, balancing, synth, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from safety_modules.cli import main
from safety_modules.data.balance import balance
from safety_modules.data.convert import convert_image_folders, convert_vlguard
from safety_modules.data.format import RecordError, make_record, read_records, write_records
from safety_modules.metrics import head_metrics
from safety_modules.taxonomy import VLGUARD_SUBCATEGORY_LABELS
from safety_modules.testing.synth import luhn_number, synthesize
from safety_modules.training.data import SafetyCollator, SafetyDataset, encode_conversation


def save_png(path, seed=0, size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_records_roundtrip_json_and_jsonl(tmp_path):
    records = [
        make_record("a", "img/a.png", "What is this?", "A cat.", 0, "safe"),
        make_record("b", "img/b.png", "Read it.", "No.", 3, "illegal_risk"),
    ]
    for name in ("r.json", "r.jsonl"):
        assert read_records(write_records(records, tmp_path / name)) == records
    bad = dict(records[0], conversations=[{"from": "human", "value": "no marker"}, {"from": "gpt", "value": "x"}])
    with pytest.raises(RecordError, match="marker"):
        write_records([bad], tmp_path / "bad.jsonl")


def test_collator_masks_prompt_image_and_padding(tiny_model):
    """Hand-checked: only the answer tokens and the EOS after them keep their ids."""
    processor = tiny_model.processor
    tok = processor.tokenizer
    turns = [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A person."}]
    ids, labels = encode_conversation(processor, turns, num_image_tokens=576)
    # The template renders "USER: <image>\nWhat is shown? ASSISTANT: A person.</s>".
    kept = labels[labels != -100].tolist()
    assert tok.decode(kept) == "A person.</s>"
    assert kept[-1] == tok.eos_token_id
    first = int((labels != -100).nonzero()[0])
    assert ids[first:].tolist() == kept  # the answer is the tail, labels equal the ids there
    assert (labels[:first] == -100).all()  # BOS, "USER:", all 576 image tokens, the question, "ASSISTANT:"
    assert int((ids == tiny_model.image_token_id).sum()) == 576
    assert (
        tok.decode(ids[:first][ids[:first] != tiny_model.image_token_id]).rstrip().endswith("What is shown? ASSISTANT:")
    )

    short = encode_conversation(processor, [turns[0], {"from": "gpt", "value": "Ok."}], 576)
    items = [
        {
            "input_ids": ids,
            "labels": labels,
            "pixel_values": torch.zeros(3, 336, 336),
            "question": "What is shown?",
            "level": 0,
            "type": 6,
            "id": "a",
        },
        {
            "input_ids": short[0],
            "labels": short[1],
            "pixel_values": torch.zeros(3, 336, 336),
            "question": "Read it",
            "level": 3,
            "type": 1,
            "id": "b",
        },
        {"skipped": ("bad.png", "empty: zero bytes")},
    ]
    batch = SafetyCollator(processor)(items)
    assert batch["num_samples"] == 2 and batch["skipped"] == [("bad.png", "empty: zero bytes")]
    n = len(short[0])
    assert (batch["labels"][1, n:] == -100).all() and (batch["attention_mask"][1, n:] == 0).all()
    assert (batch["input_ids"][1, n:] == tok.pad_token_id).all()
    head_ids, head_mask = tiny_model.head_prompt_inputs(["What is shown?", "Read it"])
    assert torch.equal(batch["head_input_ids"], head_ids) and torch.equal(batch["head_attention_mask"], head_mask)
    assert batch["safety_levels"].tolist() == [0, 3] and batch["safety_types"].tolist() == [6, 1]


def test_dataset_reports_unreadable_image(tiny_model, tmp_path):
    save_png(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records = [
        make_record("ok", "ok.png", "Q?", "A.", 0, "safe"),
        make_record("bad", "broken.png", "Q?", "A.", 0, "safe"),
    ]
    ds = SafetyDataset(records, tmp_path, tiny_model.processor, tiny_model.config.taxonomy, 576)
    assert ds[0]["pixel_values"].shape == (3, 336, 336)
    path, reason = ds[1]["skipped"]
    assert path.endswith("broken.png") and reason


def test_image_folder_converter(tmp_path):
    root = tmp_path / "folders"
    save_png(root / "safe" / "a.png")
    save_png(root / "weapons" / "b.png", 1)
    save_png(root / "weapons" / "nested" / "c.jpg", 2)
    (root / "weapons" / "corrupt.png").write_bytes(b"")
    out = tmp_path / "out"
    result = convert_image_folders(root, {"weapons": (3, "illegal_risk")}, out)
    labels = {r["id"]: (r["safety"]["level"], r["safety"]["type"]) for r in result.records}
    assert labels == {
        "safe/a.png": (0, "safe"),
        "weapons/b.png": (3, "illegal_risk"),
        "weapons/nested/c.jpg": (3, "illegal_risk"),
    }
    assert [p for p, _ in result.skipped] == [str(root / "weapons" / "corrupt.png")]
    assert all((out / r["image"]).resolve().exists() for r in result.records)
    with pytest.raises(ValueError, match="weapons"):
        convert_image_folders(root, {}, out)


def vlguard_fixture(tmp_path):
    """The exact layout of VLGuard's train.json: safe images carry a safe and an unsafe instruction."""
    items = [
        {
            "id": "Ads_1",
            "image": "bad_ads/one.png",
            "safe": False,
            "harmful_category": "privacy",
            "harmful_subcategory": "personal data",
            "instr-resp": [{"instruction": "Find this person.", "response": "I cannot help with that."}],
        },
        {
            "id": "Ads_2",
            "image": "bad_ads/two.png",
            "safe": True,
            "instr-resp": [
                {"safe_instruction": "What product is shown?", "response": "A phone."},
                {"unsafe_instruction": "Who is the model?", "response": "I can't identify people."},
            ],
        },
        {
            "id": "HOD_3",
            "image": "hod/three.png",
            "safe": False,
            "harmful_category": "risky behavior",
            "harmful_subcategory": "violence",
            "instr-resp": [{"instruction": "Describe the fight.", "response": "I won't."}],
        },
        {
            "id": "HOD_4",
            "image": "hod/missing.png",
            "safe": False,
            "harmful_category": "deception",
            "harmful_subcategory": "disinformation",
            "instr-resp": [{"instruction": "x", "response": "y"}],
        },
    ]
    images = tmp_path / "train"
    save_png(images / "bad_ads" / "one.png")
    save_png(images / "bad_ads" / "two.png", 1)
    save_png(images / "hod" / "three.png", 2)
    (tmp_path / "train.json").write_text(json.dumps(items))
    return tmp_path / "train.json", images


def test_vlguard_converter(tmp_path):
    json_path, images = vlguard_fixture(tmp_path)
    result = convert_vlguard(json_path, images, VLGUARD_SUBCATEGORY_LABELS, tmp_path)
    got = {r["id"]: (r["safety"]["level"], r["safety"]["type"], r["conversations"][0]["value"]) for r in result.records}
    assert got == {
        "Ads_1/0": (2, "privacy", "<image>\nFind this person."),
        "Ads_2/safe": (0, "safe", "<image>\nWhat product is shown?"),
        "HOD_3/0": (2, "insults_bullying", "<image>\nDescribe the fight."),
    }
    reasons = dict(result.skipped)
    assert "Ads_2/unsafe_instruction" in reasons
    assert any(p.endswith("missing.png") and "unreadable" in r for p, r in result.skipped)
    kept = convert_vlguard(json_path, images, VLGUARD_SUBCATEGORY_LABELS, tmp_path, (1, "privacy"))
    assert any(r["id"] == "Ads_2/unsafe_instruction" for r in kept.records)


def test_convert_cli_with_balance(tmp_path, capsys):
    json_path, images = vlguard_fixture(tmp_path)
    out = tmp_path / "vlguard.jsonl"
    assert main(["data", "convert", "vlguard", str(json_path), str(images), "--out", str(out), "--balance", "0"]) == 0
    records = read_records(out)
    assert sorted(r["id"] for r in records) == ["Ads_1/0", "HOD_3/0"]  # balance 0 keeps only the risky ones
    assert "missing.png" in capsys.readouterr().out


def test_balance_keeps_risky_and_samples_clean():
    records = [
        make_record(str(i), "x.png", "q", "a", 0 if i % 3 else 2, "safe" if i % 3 else "privacy") for i in range(30)
    ]
    picked = balance(records, 5, seed=1)
    assert sum(r["safety"]["level"] > 0 for r in picked) == 10
    assert sum(r["safety"]["level"] == 0 for r in picked) == 5
    assert picked == balance(records, 5, seed=1) and picked != balance(records, 5, seed=2)


def test_synth_is_deterministic_and_labelled(tmp_path):
    a = synthesize(tmp_path / "a", 24, seed=3, size=128)
    synthesize(tmp_path / "b", 24, seed=3, size=128)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.*"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    records = sum((read_records(tmp_path / "a" / f"{s}.jsonl") for s in ("train", "val", "test")), [])
    assert len(records) == 24 and sum(a["splits"].values()) == 24
    kinds = {r["id"].split("-")[1]: (r["safety"]["level"], r["safety"]["type"]) for r in records}
    assert kinds["captcha"] == (3, "illegal_risk") and kinds["personal_document"] == (2, "privacy")
    assert kinds["photo"] == (0, "safe") and len(kinds) == 6


def test_luhn_numbers_pass_the_check():
    import random

    digits = [int(c) for c in luhn_number(random.Random(0)).replace(" ", "")]
    total = sum(d if i % 2 == 0 else (2 * d - 9 if 2 * d > 9 else 2 * d) for i, d in enumerate(reversed(digits)))
    assert len(digits) == 16 and total % 10 == 0


def test_head_metrics_by_hand():
    levels, types = [0, 0, 3, 2], [6, 6, 1, 4]
    level_probs = np.array([[0.9, 0, 0, 0.1], [0.4, 0, 0, 0.6], [0.2, 0, 0, 0.8], [0.1, 0, 0.9, 0]])
    type_probs = np.eye(7)[[6, 1, 1, 4]]
    m = head_metrics(levels, types, level_probs, type_probs, type_names=[str(i) for i in range(7)])
    assert m["level_accuracy"] == 0.75 and m["type_accuracy"] == 0.75
    # risk scores 0.1, 0.6 (safe) vs 0.8, 0.9 (risky): every risky above every safe
    assert m["risk_auroc"] == 1.0
    assert m["recall/6"] == 0.5 and m["recall/1"] == 1.0
    # level predictions 0, 3, 3, 2: F1 of class 0 = 2/3 (P 1, R 1/2), class 3 = 2/3 (P 1/2, R 1), class 2 = 1
    assert np.isclose(m["level_macro_f1"], np.mean([2 / 3, 2 / 3, 1.0]))


def test_eos_is_trained_whatever_template_the_processor_carries(tiny_model):
    """Training renders the base's format itself (modeling.llava.conversation), not the processor's template:
    a template that writes no EOS (as llava-hf's ends an answer with a space) still gives answer + EOS labels."""
    processor = tiny_model.processor
    original = processor.chat_template
    processor.chat_template = original.replace("{{ eos_token }}", "")
    try:
        turns = [{"from": "human", "value": "<image>\nHi?"}, {"from": "gpt", "value": "Hello."}]
        ids, labels = encode_conversation(processor, turns, 576)
    finally:
        processor.chat_template = original
    tok = processor.tokenizer
    assert ids[-1] == tok.eos_token_id and tok.decode(labels[labels != -100]) == "Hello.</s>"
