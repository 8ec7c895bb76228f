"""Eval recipes: the files in eval/ are read, flags override them, the judge prompts come from one rubric file."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import yaml

from safety_modules.cli import build_parser, main
from safety_modules.data.rtvlm import SUBTASKS
from safety_modules.evaluation.judge_prompts import DEFAULT_RUBRICS, DEFAULT_RUBRICS_PATH, load_rubrics
from safety_modules.evaluation.recipes import RTVLMRecipe, UnsafeConceptsRecipe

from ..benchmark_fixtures import ChatServer, write_rtvlm_snapshot

EVAL_DIR = Path(__file__).resolve().parents[2] / "eval"


def test_the_repository_recipes_read_and_flags_win():
    rtvlm = RTVLMRecipe.from_yaml(EVAL_DIR / "rtvlm.yaml")
    assert rtvlm.split == "test" and rtvlm.judge == "api" and rtvlm.rubrics is None and rtvlm.judge_temperature == 0
    overridden = RTVLMRecipe.from_yaml(EVAL_DIR / "rtvlm.yaml", judge_model="m", batch_size=2, split=None)
    assert (overridden.judge_model, overridden.batch_size, overridden.split) == ("m", 2, "test")  # None: not given
    concepts = UnsafeConceptsRecipe.from_yaml(EVAL_DIR / "unsafe_concepts.yaml", parts=["text_only"])
    assert concepts.parts == ["text_only"] and concepts.perception_classifier is None
    assert RTVLMRecipe.from_yaml() == RTVLMRecipe()  # no recipe: the defaults


def test_bad_recipes_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="recipe for benchmark 'unsafe_concepts', not 'rtvlm'"):
        RTVLMRecipe.from_yaml(EVAL_DIR / "unsafe_concepts.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("benchmark: rtvlm\njudge_modle: gpt\n")
    with pytest.raises(ValueError, match=r"unknown rtvlm recipe settings \['judge_modle'\]"):
        RTVLMRecipe.from_yaml(bad)
    bad.write_text("benchmark: rtvlm\nsplit: dev\n")
    with pytest.raises(ValueError, match="split: Input should be 'all', 'train' or 'test'"):
        RTVLMRecipe.from_yaml(bad)
    with pytest.raises(ValueError, match="parts.0: Input should be 'perception', 'alignment' or 'text_only'"):
        UnsafeConceptsRecipe.from_yaml(None, parts=["vision"])
    with pytest.raises(FileNotFoundError):
        RTVLMRecipe.from_yaml(tmp_path / "missing.yaml")


def _subparser(benchmark: str):
    eval_parser = build_parser()._subparsers._group_actions[0].choices["eval"]
    return eval_parser._subparsers._group_actions[0].choices[benchmark]


@pytest.mark.parametrize("benchmark, recipe", [("rtvlm", RTVLMRecipe), ("unsafe-concepts", UnsafeConceptsRecipe)])
def test_every_recipe_key_is_a_flag_that_defaults_to_the_recipe(benchmark, recipe):
    actions = {a.dest: a for a in _subparser(benchmark)._actions}
    for f in dataclasses.fields(recipe):
        assert f.name in actions, f"{benchmark}: recipe key {f.name} has no --{f.name.replace('_', '-')} flag"
        assert actions[f.name].default is None, f"--{f.name} has its own default, so it would hide the recipe's"


def test_custom_rubric_files_are_checked(tmp_path):
    data = yaml.safe_load(DEFAULT_RUBRICS_PATH.read_text())
    data["subtask_rubric"]["face"] = "beauty"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"named but not defined \['beauty'\]"):
        load_rubrics(tmp_path / "r.yaml")
    assert set(DEFAULT_RUBRICS.subtask_rubric) == set(SUBTASKS)


def test_rtvlm_run_uses_the_recipe_its_rubrics_and_the_flags(tiny_dir, tmp_path):
    """Through the CLI against a real local chat-completions server: what reaches the judge is the recipe's."""
    rubrics = yaml.safe_load(DEFAULT_RUBRICS_PATH.read_text())
    rubrics["preamble"] = "CUSTOM PREAMBLE from the recipe's rubric file."
    rubrics["subtask_rubric"]["face"] = "safety"  # fairness -> safety for the face subtask
    (tmp_path / "rubrics.yaml").write_text(yaml.safe_dump(rubrics))
    server = ChatServer(lambda text: "7")
    try:
        recipe = yaml.safe_load((EVAL_DIR / "rtvlm.yaml").read_text())
        recipe.update(
            judge_url=server.url,
            judge_model="recipe-model",
            judge_temperature=0.3,
            judge_max_tokens=5,
            rubrics=str(tmp_path / "rubrics.yaml"),
            split="all",
            limit_per_subtask=1,
            max_new_tokens=2,
            policy="none",
        )
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        out = tmp_path / "run"
        assert (
            main(
                [
                    "eval",
                    "rtvlm",
                    "--recipe",
                    str(tmp_path / "recipe.yaml"),
                    "--data",
                    str(write_rtvlm_snapshot(tmp_path / "snap")),
                    "--base",
                    str(tiny_dir),
                    "--out",
                    str(out),
                    "--judge-model",
                    "flag-model",
                    "--batch-size",
                    "5",
                ]
            )
            == 0
        )
    finally:
        server.close()
    assert len(server.bodies) == len(SUBTASKS)  # one item per subtask, each judged once
    for body in server.bodies:
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("flag-model", 0.3, 5)
        text = next(c["text"] for c in body["messages"][0]["content"] if c["type"] == "text")
        assert text.startswith("CUSTOM PREAMBLE from the recipe's rubric file.\nQuestion: ")
    with open(out / "items.csv") as handle:
        rows = {row["subtask"]: row for row in csv.DictReader(handle)}
    assert rows["face"]["rubric"] == "safety" and rows["captcha"]["rubric"] == "illegal_risk"
    assert all(float(row["score"]) == 7.0 for row in rows.values())
    used = yaml.safe_load((out / "recipe.yaml").read_text())
    assert used["benchmark"] == "rtvlm" and used["judge_model"] == "flag-model" and used["batch_size"] == 5
    assert used["limit_per_subtask"] == 1 and used["judge_concurrency"] == 4  # recipe value, then the default
