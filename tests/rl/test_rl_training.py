"""RL on the tiny model (see `tiny_task` for the task and its one shortcut): learning, frozen base, reload, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from safety_modules.modeling.safe_llava import SafeLlava
from safety_modules.testing.rl_tiny_task import answer_odds, make_rl_corpus, make_yes_no_base, tiny_task_config
from safety_modules.training.checkpoint import checkpoints
from safety_modules.training.config import DataFile
from safety_modules.training.rl.config import RLConfig
from safety_modules.training.rl.data import load_samples
from safety_modules.training.rl.evaluate import evaluate_alignment, greedy_answers
from safety_modules.training.rl.trainer import train_rl
from tests.training.helpers import base_digest


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on this shared 2-core machine two threads under load ran RL steps ~9x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task(one_thread, tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("rl-task")
    train, heldout = make_rl_corpus(root / "corpus")
    base = make_yes_no_base(tiny_dir, train, root / "yes-no-base")
    return {"base": base, "train": train, "heldout": heldout}


def rl_config(task, out, **overrides) -> RLConfig:
    return tiny_task_config(task["base"], task["train"], out, **overrides)


def test_the_warm_start_is_image_blind(task):
    """The base RL starts from says "Yes" with the same odds (0.55, see `tiny_task`) to every image, so greedy
    it calls every image safe: strict accuracy = the Safe share (8 of 24), balanced accuracy exactly 0.5."""
    heldout = load_samples([DataFile(str(task["heldout"]))])
    model = SafeLlava.from_pretrained(task["base"], seed=0)
    odds = answer_odds(model, heldout)
    assert odds.sum(1).min() > 0.99  # it answers yes or no, nothing else
    share = odds[:, 0] / odds.sum(1)
    assert share.min() > 0.53 and share.max() < 0.57, share  # one tilt for every image, nearly even
    metrics, answers = evaluate_alignment(model, heldout, False, 4)
    assert set(answers) == {"Yes"}
    assert metrics["strict_accuracy"] == pytest.approx(8 / 24) and metrics["balanced_accuracy"] == 0.5


def mean_p_correct(model: SafeLlava, samples) -> float:
    """The policy's mean probability of the right answer ("Yes" for Safe, "No" for Unsafe): what sampling scores."""
    odds = answer_odds(model, samples)
    return torch.stack([row[0] if s.label == "Safe" else row[1] for row, s in zip(odds, samples)]).mean().item()


def assert_clearly_better(start: dict, end: dict, start_p: float, end_p: float) -> None:
    # "clearly above": greedy balanced accuracy from 0.5 (image-blind) to >= 0.7, strict +0.3 (7 more of the 24
    # images right), and the odds themselves moved (mean P(right answer) +0.05), not just a greedy tie tipped
    assert end["na"] == 0, end
    assert end["balanced_accuracy"] >= start["balanced_accuracy"] + 0.2, (start, end)
    assert end["strict_accuracy"] >= start["strict_accuracy"] + 0.3, (start, end)
    assert end_p >= start_p + 0.05, (start_p, end_p)


def test_grpo_raises_heldout_alignment_and_leaves_the_base_alone(task, tmp_path):
    """GRPO, 12 steps of 2 prompts x 4 samples, lr 2e-3, rules reward, 4 new tokens at most, on CPU.

    Printed with ``-s``: held-out (24 images), greedy, strict accuracy 0.333 -> 0.875, balanced 0.500 -> 0.844
    after the 12 steps, mean P(right answer) 0.484 -> 0.645.
    """
    heldout = load_samples([DataFile(str(task["heldout"]))])
    base_model = SafeLlava.from_pretrained(task["base"], seed=0)
    before = base_digest(base_model.base)
    start, _ = evaluate_alignment(base_model, heldout, False, 4)
    start_p = mean_p_correct(base_model, heldout)
    result = train_rl(rl_config(task, tmp_path / "grpo", algorithm="grpo", max_steps=12))
    assert result.global_step == 12 and result.adapter_dir is not None
    trained = result.policy.model
    assert base_digest(trained.base) == before  # the base (and with it the reference) never moved
    reloaded = SafeLlava.from_pretrained(task["base"], seed=0, lora=result.adapter_dir)
    end, answers = evaluate_alignment(reloaded, heldout, False, 4)
    end_p = mean_p_correct(reloaded, heldout)
    print(
        f"held-out alignment: start {start} P(right) {start_p:.3f}, end {end} P(right) {end_p:.3f} "
        f"after {result.global_step} GRPO steps"
    )
    assert_clearly_better(start, end, start_p, end_p)
    # the saved adapter answers exactly as the policy that was trained
    assert greedy_answers(trained, heldout, False, 4) == answers
    assert base_digest(reloaded.base) == before


def test_ppo_raises_heldout_alignment(task, tmp_path):
    """PPO as published (value head, GAE with gamma = lambda = 1, k1 KL 0.1 in the reward, entropy 0.02),
    16 steps of 8 answers, lr 1e-3, rules reward, 4 new tokens at most, on CPU.

    Printed with ``-s``: held-out (24 images), greedy, strict accuracy 0.333 -> 0.875, balanced 0.500 -> 0.844,
    mean P(right answer) 0.484 -> 0.660.
    """
    heldout = load_samples([DataFile(str(task["heldout"]))])
    base_model = SafeLlava.from_pretrained(task["base"], seed=0)
    start, _ = evaluate_alignment(base_model, heldout, False, 4)
    start_p = mean_p_correct(base_model, heldout)
    result = train_rl(rl_config(task, tmp_path / "ppo", algorithm="ppo", max_steps=16, learning_rate=1e-3))
    trained = SafeLlava.from_pretrained(task["base"], seed=0, lora=result.adapter_dir)
    end, _ = evaluate_alignment(trained, heldout, False, 4)
    end_p = mean_p_correct(trained, heldout)
    print(
        f"held-out alignment: start {start} P(right) {start_p:.3f}, end {end} P(right) {end_p:.3f} "
        f"after {result.global_step} PPO steps"
    )
    assert_clearly_better(start, end, start_p, end_p)


def test_ppo_resume_equals_an_uninterrupted_run(task, tmp_path):
    overrides = dict(
        algorithm="ppo",
        max_steps=2,
        rollout_batch_size=4,
        step_batch_size=2,
        per_device_batch_size=1,
        max_new_tokens=3,
        noptepochs=2,
    )
    full = train_rl(rl_config(task, tmp_path / "full", **overrides))
    part = train_rl(rl_config(task, tmp_path / "part", **overrides), stop_after=1)
    assert part.global_step == 1 and part.adapter_dir is None
    assert [c.name for c in checkpoints(tmp_path / "part")] == ["checkpoint-1"]
    # As a run killed after logging step 2 but before checkpointing it leaves its log: step 2 is run again.
    log = tmp_path / "part" / "log.jsonl"
    log.write_text(log.read_text() + json.dumps({"step": 2, "reward": 0.0}) + "\n")
    resumed = train_rl(rl_config(task, tmp_path / "part", resume_from="latest", **overrides))
    assert resumed.global_step == 2
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]  # no step logged twice
    a = dict(full.policy.named_parameters())
    b = dict(resumed.policy.named_parameters())
    trained = [n for n, p in a.items() if p.requires_grad]
    assert any("value_head" in n for n in trained) and any("lora_B" in n for n in trained)
    assert any(a[n].abs().sum() > 0 for n in trained if "lora_B" in n)  # training moved the adapter
    for name in trained:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    assert [h["reward"] for h in resumed.history] == pytest.approx([h["reward"] for h in full.history], abs=1e-6)
    assert [h["pg_loss"] for h in resumed.history] == pytest.approx([h["pg_loss"] for h in full.history], abs=1e-5)
    assert (tmp_path / "full" / "value_head.safetensors").is_file()


def test_cli_trains_and_writes_the_before_after_report(task, tmp_path):
    import json

    import yaml

    from safety_modules.cli import main

    recipe = tmp_path / "rl.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "algorithm": "grpo",
                "base": str(task["base"]),
                "train_data": [str(task["train"])],
                "eval_data": [str(task["heldout"])],
                "output_dir": str(tmp_path / "run"),
                "max_steps": 2,
                "rollout_batch_size": 8,
                "step_batch_size": 8,
                "per_device_batch_size": 8,
                "group_size": 4,
                "reward": "rules",
                "max_new_tokens": 4,
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                "progress_bar": False,
            }
        )
    )
    assert main(["train", "rl", str(recipe)]) == 0
    assert (tmp_path / "run" / "lora_adapter" / "adapter_config.json").is_file()
    results = json.loads((tmp_path / "run" / "report" / "results.json").read_text())
    before, after = results["before (base)"], results["after (grpo)"]
    for metrics in (before, after):
        assert metrics["visual"]["overall"]["n"] == 16  # the held-out unsafe images
        assert metrics["text_only"]["overall"]["n"] == 4 * 5  # 4 unsafe kinds x the five text-only prompts
        assert 0.0 <= metrics["diversity"] <= 1.0
        assert metrics["general_ability"]["n"] == 8
        assert metrics["over_refusal"]["n"] == 8
    text = (tmp_path / "run" / "report" / "results.md").read_text()
    assert "modality gap" in text and "1 - Self-BLEU" in text and "APPROXIMATE" in text
    with pytest.raises(SystemExit):
        main(["train", "rl"])
    assert main(["train", "rl", str(recipe), "--set", "algorithm=a2c"]) == 2  # a clear error, no traceback


def test_classifier_reward_drives_a_run(task, classifier_dir, tmp_path):
    """The classifier reward wired into the loop (a random classifier: this checks the plumbing, not learning)."""
    result = train_rl(
        rl_config(
            task,
            tmp_path / "clf",
            algorithm="ppo",
            max_steps=1,
            rollout_batch_size=4,
            step_batch_size=4,
            per_device_batch_size=4,
            max_new_tokens=3,
            reward="classifier",
            reward_classifier=str(classifier_dir),
            length_bonus=4.0,
            stop_penalty=-8.0,
        )
    )
    entry = result.history[0]
    # normalised judge score in [0, 1] + 4 x length / 3 (every answer is 1-3 tokens) - 8 when no EOS
    assert -8.0 <= entry["reward"] <= 1.0 + 4.0 and math.isfinite(entry["pg_loss"])


def test_gradient_checkpointing_changes_nothing_and_bf16_runs(task, tmp_path):
    overrides = dict(
        algorithm="ppo", max_steps=1, rollout_batch_size=4, step_batch_size=4, per_device_batch_size=2, max_new_tokens=3
    )
    plain = train_rl(rl_config(task, tmp_path / "plain", **overrides))
    checkpointed = train_rl(rl_config(task, tmp_path / "ckpt", gradient_checkpointing=True, **overrides))
    a, b = dict(plain.policy.named_parameters()), dict(checkpointed.policy.named_parameters())
    for name, p in a.items():
        if p.requires_grad:
            torch.testing.assert_close(p, b[name], atol=1e-6, rtol=1e-5, msg=name)
    # bf16 in a process of its own (accelerate's state is fixed once per process)
    import json
    import os
    import subprocess
    import sys

    import yaml

    recipe = tmp_path / "bf16.yaml"
    values = {**rl_config(task, tmp_path / "bf16", mixed_precision="bf16", dtype="bf16", **overrides).to_dict()}
    recipe.write_text(yaml.safe_dump(values))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-m", "safety_modules.cli", "train", "rl", str(recipe)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    history = [json.loads(line) for line in (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()]
    assert len(history) == 1 and all(math.isfinite(v) for v in history[0].values())


def test_recipes_carry_the_published_settings():
    ppo = RLConfig.from_yaml(Path(__file__).parents[2] / "train" / "rl_ppo_llava15_7b.yaml")
    assert (ppo.algorithm, ppo.kl_coef, ppo.entropy_coef, ppo.gamma, ppo.lam) == ("ppo", 0.1, 0.02, 1.0, 1.0)
    assert (ppo.cliprange, ppo.cliprange_value, ppo.vf_coef, ppo.temperature) == (0.2, 0.2, 0.1, 1.0)
    assert (ppo.rollout_batch_size, ppo.step_batch_size, ppo.learning_rate, ppo.epochs) == (32, 32, 3e-5, 4)
    assert (ppo.lora.r, ppo.lora.alpha, ppo.length_bonus, ppo.stop_penalty, ppo.max_new_tokens) == (
        128,
        256,
        4.0,
        -8.0,
        512,
    )
    grpo = RLConfig.from_yaml(Path(__file__).parents[2] / "train" / "rl_grpo_llava15_7b.yaml")
    assert grpo.algorithm == "grpo" and grpo.prompts_per_step * grpo.group_size == grpo.rollout_batch_size
    with pytest.raises(ValueError, match="group_size"):
        RLConfig(
            algorithm="grpo",
            train_data=["x.jsonl"],
            rollout_batch_size=6,
            step_batch_size=6,
            per_device_batch_size=6,
            group_size=4,
        )
    with pytest.raises(ValueError, match="unknown RL settings"):
        RLConfig.from_dict({"train_data": ["x.jsonl"], "kl_coeff": 0.1})


def test_rl_demo(tmp_path, capsys):
    from safety_modules.cli import build_parser
    from safety_modules.testing.rl_demo import run_rl_demo

    assert build_parser().parse_args(["demo", "--rl"]).rl
    assert run_rl_demo(tmp_path / "rl", steps=2) == 0  # `safevlm demo --rl` runs 12 steps
    out = capsys.readouterr().out
    assert "[4/4] before / after" in out and "visual alignment" in out
    assert (tmp_path / "rl" / "run" / "report" / "results.md").is_file()
    assert "KL(k1) = log pi - log pi_ref" in out and "can be negative" in out
