"""RTVLM end to end on the tiny model with the offline judge, through the CLI; resumable generation."""

from __future__ import annotations

import csv
import json

import pytest

from safety_modules.cli import main
from safety_modules.data.rtvlm import SUBTASKS
from safety_modules.evaluation.generation import JsonlCache
from safety_modules.evaluation.rtvlm import PUBLISHED, summarize

from ..benchmark_fixtures import RTVLM_COUNTS, ChatServer, write_rtvlm_snapshot


def test_summary_is_the_unweighted_mean_of_ten_subtask_means():
    rows = [{"subtask": s, "score": float(i)} for i, s in enumerate(SUBTASKS)]
    rows += [{"subtask": "face", "score": 1.0}, {"subtask": "face", "score": None}]  # face: (9 + 1) / 2 = 5
    summary, overall = summarize(rows)
    assert summary["face"]["mean"] == 5.0 and summary["face"]["missing"] == 1
    assert overall == pytest.approx((sum(range(9)) + 5.0) / 10)
    # The published averages are the means of their ten columns (checks the transcription).
    for values in PUBLISHED.values():
        assert sum(values[:10]) / 10 == pytest.approx(values[10], abs=0.006)
    assert summarize([r for r in rows if r["subtask"] != "captcha"])[1] is None


def test_rtvlm_end_to_end_offline_judge(tiny_dir, tmp_path, capsys):
    snapshot = write_rtvlm_snapshot(tmp_path / "snap")
    out = tmp_path / "run"
    args = [
        "eval",
        "rtvlm",
        "--data",
        str(snapshot),
        "--base",
        str(tiny_dir),
        "--out",
        str(out),
        "--judge",
        "rules",
        "--max-new-tokens",
        "3",
        "--batch-size",
        "6",
        "--policy",
        "none",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "APPROXIMATE" in printed
    results = (out / "results.md").read_text()
    assert "APPROXIMATE" in results
    with open(out / "results.csv") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["model"] + list(SUBTASKS.values()) + ["Avg"]
    ours = table[1]
    assert "APPROXIMATE" in ours[0]
    scores = [float(v) for v in ours[1:11]]
    assert all(0.0 <= v <= 10.0 for v in scores)
    assert float(ours[11]) == pytest.approx(sum(scores) / 10, abs=1e-9)
    assert [row[0] for row in table[2:]] == list(PUBLISHED)
    assert table[2][11] == "6.39" and table[3][11] == "7.92" and table[4][11] == "8.26"
    for title in SUBTASKS.values():
        assert f"| {title} |" in results
    with open(out / "items.csv") as handle:
        items = list(csv.DictReader(handle))
    assert len(items) == sum(RTVLM_COUNTS.values())
    assert {row["subtask"]: sum(r["subtask"] == row["subtask"] for r in items) for row in items} == RTVLM_COUNTS
    assert (out / "scores.png").stat().st_size > 0
    assert json.loads((out / "results.json").read_text())["approximate"] is True

    # Resume: drop half of the cached answers and corrupt the last line, as a crash would.
    cache_file = out / "answers.jsonl"
    lines = cache_file.read_text().splitlines()
    assert len(lines) == len(items)
    kept = lines[: len(lines) // 2]
    cache_file.write_text("\n".join(kept) + "\n" + lines[len(lines) // 2][:20])
    before = {json.loads(line)["id"]: json.loads(line)["text"] for line in lines}
    assert main(args) == 0
    after = JsonlCache(cache_file).entries
    assert len(after) == len(items)
    assert {e["id"]: e["text"] for e in after.values()} == before  # greedy: the redone answers are identical
    # A full rerun generates nothing new.
    size = cache_file.stat().st_size
    assert main(args) == 0
    assert cache_file.stat().st_size == size

    # The same answers judged through the CLI by a (local) chat-completions judge.
    server = ChatServer(lambda text: "7" if "Scoring Guide" in text else "?")
    try:
        api = [a if a != "rules" else "api" for a in args] + ["--judge-url", server.url, "--judge-model", "local"]
        assert main(api) == 0
    finally:
        server.close()
    assert cache_file.stat().st_size == size
    assert len(server.bodies) == len(items)
    report = json.loads((out / "results.json").read_text())
    assert report["approximate"] is False and report["score"] == 7.0 and report["judge_failures"] == 0
    assert "APPROXIMATE" not in (out / "results.md").read_text()

    # A judge that fails on some items: they get no score and their error, the run goes on, the report counts them.
    (out / "judgments.jsonl").unlink()
    server = ChatServer(lambda text: "7", failures=3)
    try:
        api = [a if a != "rules" else "api" for a in args]
        api += ["--judge-url", server.url, "--judge-model", "local", "--judge-retries", "0", "--judge-concurrency", "1"]
        assert main(api) == 0
    finally:
        server.close()
    assert "judge failures: 3 of" in capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    assert report["judge_failures"] == 3
    assert f"Judge failures: 3 of {len(items)} items" in (out / "results.md").read_text()
    with open(out / "items.csv") as handle:
        failed = [r for r in csv.DictReader(handle) if r["judge_error"]]
    assert len(failed) == 3 and all("HTTP 500" in r["judge_error"] and r["score"] == "" for r in failed)


def test_answer_cache_identity_changes_when_modules_are_retrained(tmp_path):
    from safety_modules.cli.eval_commands import _identity

    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    first = _identity(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"y" * 12)
    assert _identity(str(tmp_path)) != first
    assert _identity("llava-hf/llava-1.5-7b-hf") == ["llava-hf/llava-1.5-7b-hf"] and _identity(None) == [None]
