"""``safevlm eval head``: the safety head as a classifier over training records + a folder of safe photos."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from safety_modules.cli import main
from safety_modules.data.rtvlm import rtvlm_to_records
from safety_modules.evaluation.head import classification_metrics, load_labelled
from safety_modules.images import decode_image
from safety_modules.taxonomy import DEFAULT_TYPES

from ..benchmark_fixtures import write_rtvlm_snapshot, write_safervlm_layout


def _auroc_by_ranks(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted half."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def test_classification_metrics_by_hand():
    levels = np.array([0, 0, 3, 2])
    types = np.array([6, 6, 1, 4])
    level_probs = np.array([[0.9, 0.1, 0, 0], [0.3, 0.7, 0, 0], [0.2, 0, 0, 0.8], [0.6, 0, 0.4, 0]])
    type_probs = np.eye(7)[[6, 1, 1, 3]]
    m = classification_metrics(levels, types, level_probs, type_probs, DEFAULT_TYPES, "safe")
    # risk = 1 - P(level 0) = [0.1, 0.7, 0.8, 0.4]; positives {0.8, 0.4} vs negatives {0.1, 0.7}: 3 of 4 pairs
    assert m["auroc"] == pytest.approx(0.75)
    assert m["risky_accuracy"] == pytest.approx(0.5)  # argmax levels [0, 1, 3, 0] -> flags [F, T, T, F]
    assert m["level_accuracy"] == pytest.approx(0.5)
    assert m["type_recall"]["illegal_risk"] == 1.0 and m["type_recall"]["privacy"] == 0.0
    assert m["type_recall"]["safe"] == 0.5 and m["type_recall"]["politics"] is None
    assert m["level_confusion"][0] == [1, 1, 0, 0] and m["level_confusion"][3] == [0, 0, 0, 1]


def test_eval_head_end_to_end(tiny_dir, tmp_path, photos, capsys):
    records_dir = tmp_path / "records"
    records = rtvlm_to_records(write_rtvlm_snapshot(tmp_path / "snap"), records_dir, split="all")
    (records_dir / "train.json").write_text(json.dumps(records))
    safe_dir = tmp_path / "safe"
    safe_dir.mkdir()
    for i, photo in enumerate(photos):
        photo.resize((200, 150)).save(safe_dir / f"photo{i}.jpg")
    (safe_dir / "broken.png").write_bytes(b"\x89PNG broken")  # reported and skipped
    out = tmp_path / "head"
    assert (
        main(
            [
                "eval",
                "head",
                "--data",
                str(records_dir / "train.json"),
                str(safe_dir),
                "--base",
                str(tiny_dir),
                "--out",
                str(out),
                "--batch-size",
                "8",
                "--policy",
                "argmax",
            ]
        )
        == 0
    )
    assert "AUROC" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == len(records) + len(photos)
    safe_records = sum(r["safety"]["level"] == 0 for r in records)  # RTVLM rows labelled "Safe to Answer"
    assert metrics["n_safe"] == len(photos) + safe_records and metrics["n_risky"] == len(records) - safe_records
    assert sum(map(sum, metrics["level_confusion"])) == metrics["n"]
    with open(out / "items.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == metrics["n"]
    scores = np.array([float(r["risk_score"]) for r in rows])
    risky = np.array([int(r["gold_level"]) > 0 for r in rows])
    assert metrics["auroc"] == pytest.approx(_auroc_by_ranks(scores, risky))
    safe_actions = [r["action"] for r in rows if r["gold_level"] == "0"]
    assert metrics["over_refusal"] == pytest.approx(safe_actions.count("refuse") / len(safe_actions))
    assert all(a in ("allow", "hint", "refuse") for a in safe_actions)
    for png in ("roc.png", "level_confusion.png", "type_confusion.png"):
        assert decode_image(out / png).size[0] > 100
    assert "over-refusal" in (out / "results.md").read_text()


def test_load_labelled_unsafe_concepts(tmp_path):
    items = load_labelled(write_safervlm_layout(tmp_path))
    assert len(items) == 6 and all(it.level > 0 for it in items)
    assert {it.type for it in items} <= set(DEFAULT_TYPES)
    with pytest.raises(FileNotFoundError):
        load_labelled(tmp_path / "missing")
