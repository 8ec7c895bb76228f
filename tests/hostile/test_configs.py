"""Settings files and flags: one loader with size, alias and depth caps, then typed validation."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from safety_modules.checkpoints.card import CardData
from safety_modules.cli import build_parser
from safety_modules.cli.recipe_overrides import recipe_overrides
from safety_modules.errors import ConfigError
from safety_modules.safe_files import MAX_DEPTH, read_json, read_yaml
from safety_modules.training.config import TrainConfig

from .conftest import BOMB, DEEP_JSON, DEEP_YAML, cli, cli_subprocess, one_line_error


def entry_points(tiny_dir, modules_dir, photo_file, tmp_path):
    """Each command that reads a YAML settings file, as a function of that file: its arguments."""
    return {
        "generate --policy": lambda f: ["generate", "--base", tiny_dir, "--image", photo_file, "--prompt", "hi",
                                        "--policy", f],
        "train stage1": lambda f: ["train", "stage1", f],
        "train rl": lambda f: ["train", "rl", f],
        "eval rtvlm --recipe": lambda f: ["eval", "rtvlm", "--recipe", f, "--data", tmp_path, "--base", tiny_dir,
                                          "--out", tmp_path / "eval"],
        "push --card-data": lambda f: ["push", modules_dir, "--repo-id", "me/mods", "--dry-run", "--local-dir",
                                       tmp_path / "staged", "--card-data", f],
    }  # fmt: skip


@pytest.mark.timeout(120)
@pytest.mark.parametrize("content, fragment", [(BOMB, "expands to more than"), (DEEP_YAML, "nested deeper than")])
@pytest.mark.parametrize(
    "entry", ["generate --policy", "train stage1", "train rl", "eval rtvlm --recipe", "push --card-data"]
)
def test_bombs_and_deep_nesting_are_one_line_errors(
    entry, content, fragment, tiny_dir, modules_dir, photo_file, tmp_path, capsys
):
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(content)
    args = entry_points(tiny_dir, modules_dir, photo_file, tmp_path)[entry](hostile)
    start = time.monotonic()
    rc, err = cli(capsys, *args)
    one_line_error(rc, err, str(hostile), fragment)
    assert time.monotonic() - start < 30, "the caps fail a bomb in milliseconds; the rest is loading the tiny model"
    assert not (tmp_path / "staged").exists()  # nothing staged from a refused card


def test_a_billion_laughs_policy_ends_in_a_fresh_process_within_seconds(tiny_dir, photo_file, tmp_path):
    """The case that hung (2.1 GB RSS after 30 s): a fresh process, killed if it runs past the timeout."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    rc, err, seconds = cli_subprocess(
        "generate", "--base", tiny_dir, "--image", photo_file, "--prompt", "hi", "--policy", bomb, timeout=120
    )
    one_line_error(rc, err, "expands to more than")
    print(f"billion-laughs policy refused in {seconds:.1f} s (process start and tiny model load included)")


@pytest.mark.timeout(120)
def test_a_200_mb_policy_is_refused_before_it_is_read(tiny_dir, photo_file, tmp_path, capsys):
    big = tmp_path / "big.yaml"
    line = b"# " + b"x" * 1021 + b"\n"  # 1 KiB of valid YAML (a comment)
    with big.open("wb") as handle:
        handle.write(b"name: big\n")
        for _ in range(200):
            handle.write(line * 1024)  # 1 MiB at a time: 200 MiB in all
    rc, err = cli(capsys, "generate", "--base", tiny_dir, "--image", photo_file, "--prompt", "hi", "--policy", big)
    one_line_error(rc, err, str(big), "at most 1048576 bytes")


@pytest.mark.parametrize(
    "config, fragment",
    [
        ("padding", "at most 16777216 bytes"),  # 20 MB: over the cap
        ("deep", "nested deeper than"),
        ("list", "a model config is a JSON object, got list"),
    ],
)
def test_a_hostile_base_config_json_is_refused(config, fragment, tiny_dir, photo_file, tmp_path, capsys):
    base = tmp_path / "base"
    base.mkdir()
    for file in tiny_dir.iterdir():
        if file.name != "config.json":
            (base / file.name).symlink_to(file)
    data = json.loads((tiny_dir / "config.json").read_text())
    if config == "padding":
        (base / "config.json").write_text(json.dumps({**data, "padding": "x" * 20_000_000}))
    elif config == "deep":
        (base / "config.json").write_text(json.dumps(data)[:-1] + ', "deep": ' + DEEP_JSON + "}")
    else:
        (base / "config.json").write_text(json.dumps([data]))
    rc, err = cli(capsys, "assess", photo_file, "--base", base)
    one_line_error(rc, err, "config.json", fragment)


def test_enum_like_strings_stay_strings(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"train_data": ["d.jsonl"]}) + "mixed_precision: no\n")
    assert TrainConfig.from_yaml(recipe).mixed_precision == "no"  # YAML 1.1 would read False
    args = build_parser().parse_args(["train", "stage1", str(recipe), "--set", "mixed_precision=no"])
    assert TrainConfig.from_yaml(recipe, **recipe_overrides(args)).mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision: Input should be 'auto', 'no', 'fp16' or 'bf16'"):
        TrainConfig.from_yaml(recipe, mixed_precision="fp8")


@pytest.mark.parametrize(
    "recipe, fragment",
    [
        ({"train_data": ["d.jsonl"], "learning_rate": "fast"}, "learning_rate: Input should be a valid number"),
        ({"train_data": "d.jsonl"}, "a data list is a YAML list of paths"),
        ({"train_data": ["d.jsonl"], "lora": {"r": "big"}}, "lora.r: Input should be a valid integer"),
        ({"train_data": ["d.jsonl"], "lora": {"rank": 8}}, "lora.rank: Unexpected keyword argument"),
        ({"train_data": [{"path": ["a", "b"]}]}, "train_data.0.path: Input should be a valid string"),
        (["train_data", "d.jsonl"], "settings are a YAML mapping"),
    ],
)
def test_wrong_types_in_a_recipe_are_named(recipe, fragment, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe) if not isinstance(recipe, dict) else yaml.safe_dump(
        {"base": str(tmp_path / "no-base"), **recipe}))  # fmt: skip
    rc, err = cli(capsys, "train", "stage1", path)
    one_line_error(rc, err, str(path), fragment)


def test_a_folder_as_recipe_is_one_line(tmp_path, capsys):
    rc, err = cli(capsys, "train", "stage1", tmp_path)
    one_line_error(rc, err, str(tmp_path), "is a folder")


def test_card_data_with_a_list_where_a_string_belongs(modules_dir, tmp_path, capsys):
    card = tmp_path / "card.yaml"
    card.write_text("name: [one, two]\nlicense: apache-2.0\n")
    rc, err = cli(
        capsys, "push", modules_dir, "--repo-id", "me/mods", "--dry-run", "--local-dir", tmp_path / "s",
        "--card-data", card,
    )  # fmt: skip
    one_line_error(rc, err, str(card), "name: Input should be a valid string")
    assert CardData.from_dict({"training_data": "one set"}).training_data == ["one set"]


@pytest.mark.parametrize(
    "command, shown",
    [
        (["train", "stage1"], ["training settings (recipe keys; defaults):", "learning_rate: 1e-05", '"r": 256']),
        (["train", "rl"], ["RL settings (recipe keys; defaults):", 'algorithm: "ppo"', "kl_coef: 0.1"]),
        (["eval", "rtvlm"], ["rtvlm recipe settings (recipe keys; defaults):", "judge_concurrency: 4"]),
        (["eval", "unsafe-concepts"], ['parts: ["perception", "alignment", "text_only"]']),
    ],
)
def test_help_shows_every_default(command, shown, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for text in shown:
        assert text in out


def test_the_loader_caps(tmp_path):
    start = time.monotonic()
    (tmp_path / "bomb.yaml").write_text(BOMB)
    with pytest.raises(ConfigError, match="expands to more than"):
        read_yaml(tmp_path / "bomb.yaml")
    (tmp_path / "loop.yaml").write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="recursive alias"):
        read_yaml(tmp_path / "loop.yaml")
    (tmp_path / "deep.json").write_text(DEEP_JSON)
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_DEPTH}"):
        read_json(tmp_path / "deep.json")
    with pytest.raises(ConfigError, match="is at most"):
        read_yaml("/dev/zero")  # endless: only the cap's worth is read
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(tmp_path / "latin1.yaml")
    (tmp_path / "two.yaml").write_text("a: 1\n---\nb: 2\n")
    with pytest.raises(ConfigError, match="two.yaml"):
        read_yaml(tmp_path / "two.yaml")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        read_yaml(tmp_path / "missing.yaml")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    "content, fragment",
    [(DEEP_JSON, "nested deeper than"), ("[1, 2]", "is not a safety-modules config"), ("{", "not valid JSON")],
)
def test_a_hostile_modules_config_is_refused(content, fragment, tiny_dir, modules_dir, photo_file, tmp_path, capsys):
    modules = tmp_path / "mods"
    modules.mkdir()
    for file in modules_dir.iterdir():
        (modules / file.name).symlink_to(file)
    (modules / "config.json").unlink()
    (modules / "config.json").write_text(content)
    rc, err = cli(capsys, "assess", photo_file, "--base", tiny_dir, "--safety", modules)
    one_line_error(rc, err, "config.json", fragment)
