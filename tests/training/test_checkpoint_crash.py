"""Checkpoints that count only when complete: a real training process SIGKILLed inside checkpoint writes resumes
from the last complete checkpoint and ends with the weights of an uninterrupted run; half-written folders,
`latest` with nothing to resume, and logs that a resume would repeat."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from safety_modules.testing.synth import synthesize
from safety_modules.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("crash-corpus")
    synthesize(out, 18, seed=0, size=64)  # 6 training records: batches of 2 cross an epoch within 4 steps
    return out


def _recipe(tmp_path: Path, tiny_dir: Path, corpus: Path, out: Path) -> Path:
    recipe = {
        "stage": 1,
        "base": str(tiny_dir),
        "train_data": [str(corpus / "train.jsonl")],
        "output_dir": str(out),
        "seed": 0,
        "max_steps": 4,
        "per_device_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 5e-3,
        "warmup_steps": 1,
        "logging_steps": 1,
        "save_steps": 1,
        "save_total_limit": 2,
        "num_workers": 0,
        "progress_bar": False,
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _train(recipe: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop(ckpt.KILL_AT_ENV, None)
    if kill_at:
        env[ckpt.KILL_AT_ENV] = kill_at
    command = [sys.executable, "-m", "safety_modules.cli", "train", "stage1", str(recipe), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _steps(log: Path) -> list[int]:
    return [json.loads(line)["step"] for line in log.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_sigkill_inside_checkpoint_writes_resumes_from_the_last_complete_one(tiny_dir, corpus, tmp_path):
    full = _train(_recipe(tmp_path, tiny_dir, corpus, tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    part = tmp_path / "part"
    recipe = _recipe(tmp_path, tiny_dir, corpus, part)

    # 1. Killed between the temporary trainer_state.json and its rename (the half-written state file).
    killed = _train(recipe, kill_at="checkpoint-2/trainer_state.json:temp")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [c.name for c in ckpt.checkpoints(part)] == ["checkpoint-1"]
    assert (part / "checkpoint-2").is_dir() and not (part / "checkpoint-2" / ckpt.STATE).exists()

    # 2. Resumed; killed after every file of checkpoint 3 but before its marker is renamed into place.
    killed = _train(recipe, "--resume-from", "latest", kill_at="checkpoint-3/COMPLETE:temp")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "skipping incomplete checkpoint(s)" in killed.stderr and "checkpoint-2 (no COMPLETE marker" in killed.stderr
    assert "resumed from" in killed.stdout and "checkpoint-1 at step 1/4" in killed.stdout
    assert [c.name for c in ckpt.checkpoints(part)] == ["checkpoint-1", "checkpoint-2"]
    assert (part / "checkpoint-3" / ckpt.STATE).is_file()  # every file there, yet it does not count

    # 3. Resumed; killed in the prune after checkpoint 3, checkpoint 1's marker gone and its files not yet.
    killed = _train(recipe, "--resume-from", "latest", kill_at="checkpoint-1/COMPLETE:removed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "checkpoint-3 (no COMPLETE marker" in killed.stderr and "checkpoint-2 at step 2/4" in killed.stdout
    assert [c.name for c in ckpt.checkpoints(part)] == ["checkpoint-2", "checkpoint-3"]

    # 4. Resumed; killed right after the first file of the final checkpoint is renamed into place.
    killed = _train(recipe, "--resume-from", "latest", kill_at="checkpoint-4/rng_0.safetensors:renamed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "checkpoint-3 at step 3/4" in killed.stdout

    done = _train(recipe, "--resume-from", "latest")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checkpoint-3 at step 3/4" in done.stdout and "checkpoint-4 (no COMPLETE marker" in done.stderr
    a = load_file(str(tmp_path / "full" / "safety_modules" / "model.safetensors"))
    b = load_file(str(part / "safety_modules" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    # Steps 2, 3 and 4 were logged by killed runs and run again: each is in the log once.
    assert _steps(part / "log.jsonl") == _steps(tmp_path / "full" / "log.jsonl") == [1, 2, 3, 4]
    assert not list(part.rglob(".*.tmp"))
    assert [c.name for c in sorted(part.glob("checkpoint-*"))] == ["checkpoint-3", "checkpoint-4"]  # pruned


# ---------------------------------------------------------------- in-process cases


def _state(seed: int = 0):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return dict(layer.named_parameters()), optimizer, scheduler


def _save(out: Path, step: int) -> Path:
    params, optimizer, scheduler = _state(step)
    return ckpt.save_checkpoint(out / f"checkpoint-{step}", params, optimizer, scheduler, {"global_step": step})


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda d: (d / ckpt.STATE).write_text('{"optimizer": {"param_gr'), "trainer_state.json has"),
        (lambda d: (d / ckpt.PARAMS).write_bytes(b""), "trainable.safetensors has 0 bytes"),
        (lambda d: (d / ckpt.OPTIMIZER_TENSORS).unlink(), "optimizer.safetensors is missing"),
        (lambda d: (d / ckpt.COMPLETE).unlink(), "no COMPLETE marker"),
        (lambda d: (d / ckpt.COMPLETE).write_text("{"), "unreadable COMPLETE marker"),
    ],
)
def test_latest_skips_a_damaged_checkpoint_and_names_it(tmp_path, caplog, damage, reason):
    _save(tmp_path, 1)
    damage(_save(tmp_path, 2))
    params, optimizer, scheduler = _state(9)
    with caplog.at_level(logging.WARNING):
        folder, state, _ = ckpt.resume("latest", tmp_path, params, optimizer, scheduler)
    assert folder.name == "checkpoint-1" and state["global_step"] == 1
    assert "checkpoint-2 (" in caplog.text and reason in caplog.text and "resuming from checkpoint-1" in caplog.text
    with pytest.raises(ckpt.CheckpointError, match=f"checkpoint-2 is incomplete: .*{reason}"):
        ckpt.resume(str(tmp_path / "checkpoint-2"), tmp_path, params, optimizer, scheduler)


def test_a_complete_checkpoint_with_a_garbage_file_names_the_file(tmp_path):
    folder = _save(tmp_path, 1)
    size = (folder / ckpt.PARAMS).stat().st_size
    (folder / ckpt.PARAMS).write_bytes(b"\xff" * size)  # same size, so the marker cannot tell
    params, optimizer, scheduler = _state(9)
    with pytest.raises(ckpt.CheckpointError, match="trainable.safetensors is unreadable"):
        ckpt.resume("latest", tmp_path, params, optimizer, scheduler)


def test_latest_with_nothing_to_resume_says_so(tmp_path, caplog):
    params, optimizer, scheduler = _state()
    with caplog.at_level(logging.WARNING):
        assert ckpt.resume("latest", tmp_path / "empty", params, optimizer, scheduler) is None
    assert "no complete checkpoint in" in caplog.text and "starting from step 0" in caplog.text
    (tmp_path / "out" / "checkpoint-3").mkdir(parents=True)  # a first checkpoint whose write was killed
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert ckpt.resume("latest", tmp_path / "out", params, optimizer, scheduler) is None
    assert "checkpoint-3 (no COMPLETE marker" in caplog.text and "starting from step 0" in caplog.text
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.resume(str(tmp_path / "nowhere"), tmp_path, params, optimizer, scheduler)


def test_a_rewritten_checkpoint_folder_keeps_nothing_of_the_old_one(tmp_path):
    folder = _save(tmp_path, 1)
    (folder / "rng_5.safetensors").write_bytes(b"from a run on more ranks")
    _save(tmp_path, 1)
    assert not (folder / "rng_5.safetensors").exists()
    assert set(json.loads((folder / ckpt.COMPLETE).read_text())["files"]) == {
        "optimizer.safetensors",
        "rng_0.json",
        "rng_0.safetensors",
        "trainable.safetensors",
        "trainer_state.json",
    }


def test_truncate_log_keeps_steps_up_to_the_resumed_one(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3, 4, 5)]
    log.write_text("\n".join(lines) + '\n{"step": 6, "lo')  # the last line cut short by a kill
    ckpt.truncate_log(log, 4)
    assert _steps(log) == [1, 2, 3, 4]
    ckpt.truncate_log(log, 0)
    assert log.read_text() == ""
