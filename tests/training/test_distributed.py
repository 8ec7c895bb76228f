"""Several training processes, for real: `accelerate launch` starts 2 CPU processes (gloo) on the tiny model.

Two processes with per-device batch b and accumulation a must train what one process trains with b and 2a
(the same global batch, the same micro-batches), up to float32 reduction order; they must see every sample
of an epoch once between them; only the main process writes (logs, cards, checkpoints; each process its
own RNG state); a 2-process checkpoint resumes exactly on 1 and on 2 processes, or is refused with the
reason. Jobs that are not one job (a GPU config on CPUs, ``--cpu`` without mpirun, a second job in the same
output folder) stop at start. Run as ``python -m tests.training.test_distributed JOB.json``, this file is
also the launched program (`_worker`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT = 300


# ---------------------------------------------------------------- the launched program


def _worker(job_file: str) -> None:
    """One process of a launched job: train as the job says, then report what this rank saw."""
    job = json.loads(Path(job_file).read_text())
    rank = int(os.environ.get("RANK", "0"))
    # Files the main process creates get mode 0644, the other's 0600: the test tells who wrote what.
    os.umask(0o077 if rank else 0o022)
    if job["kind"] == "rl":
        from safety_modules.training.rl.config import RLConfig
        from safety_modules.training.rl.trainer import train_rl

        train_rl(RLConfig.from_dict(job["config"]))
        return
    from safety_modules.training import TrainConfig, train

    result = train(TrainConfig.from_dict(job["config"]))
    report = {"global_step": result.global_step, "sample_ids": result.sample_ids, "history": result.history}
    (Path(job["report"]) / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    _worker(sys.argv[1])


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch ARGS`` in a subprocess with one thread per process (2 shared cores)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port()), *args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def launch_two(kind: str, config: dict, report: Path) -> subprocess.CompletedProcess:
    """Two CPU processes in one gloo process group: accelerate's torchrun launcher with ACCELERATE_USE_CPU."""
    report.mkdir(parents=True, exist_ok=True)
    job = report / "job.json"
    job.write_text(json.dumps({"kind": kind, "config": config, "report": str(report)}))
    args = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    args += ["--dynamo_backend", "no", "-m", "tests.training.test_distributed", str(job)]
    return launch(args, {"ACCELERATE_USE_CPU": "1"})


def ranks(report: Path) -> list[dict]:
    return [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], start: dict[str, torch.Tensor]):
    """Equal up to float32 reduction order, and moved by training (so the comparison means something)."""
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-6, rtol=1e-4, msg=name)
    assert any(not torch.allclose(start[k], a[k]) for k in a if k in start)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """8 training records of the synthetic corpus (8 = whole micro-batches of 2 for 1 and 2 processes)."""
    from safety_modules.data.format import read_records, write_records
    from safety_modules.testing.synth import synthesize

    out = tmp_path_factory.mktemp("corpus")
    synthesize(out, 27, seed=0, size=224)
    picked = read_records(out / "train.jsonl")[:8]
    assert len(picked) == 8
    write_records(picked, out / "eight.jsonl")
    return out / "eight.jsonl"


def recipe(tiny_dir, records, out: Path, **overrides) -> dict:
    values = dict(
        stage=1,
        base=str(tiny_dir),
        train_data=[str(records)],
        output_dir=str(out),
        seed=0,
        max_steps=4,
        per_device_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=5e-3,
        warmup_steps=1,
        logging_steps=1,
        save_steps=3,
        save_total_limit=None,
        num_workers=0,
        progress_bar=False,
    )
    values.update(overrides)
    return values


def train_here(values: dict):
    from safety_modules.training import TrainConfig, train

    return train(TrainConfig.from_dict(values))


def modules(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "safety_modules" / "model.safetensors"))


def check_sharding(report: Path, ids: list[str], steps: int, per_rank_step: int) -> None:
    """Each epoch, the two ranks between them trained on every record once; each rank its equal share."""
    seen = [r["sample_ids"] for r in ranks(report)]
    assert [len(s) for s in seen] == [steps * per_rank_step] * 2
    per_epoch = len(ids) // 2
    for e in range(steps * per_rank_step // per_epoch):
        epoch = [i for s in seen for i in s[e * per_epoch : (e + 1) * per_epoch]]
        assert sorted(epoch) == sorted(ids), f"epoch {e}: overlap or loss between the ranks"


def check_only_main_wrote(out: Path) -> None:
    """Every file and folder in the output folder was created by rank 0 (mode 0644/0755), except each
    checkpoint's ``rng_1.json`` (rank 1's own random state, 0600); the log has one line per step, not one per
    process. safetensors writes its files 0600 whoever writes them, so they are checked by name only."""
    by_rank1 = [p for p in out.rglob("*") if p.suffix != ".safetensors" and not stat.S_IMODE(p.stat().st_mode) & 0o044]
    assert [str(p.relative_to(out)) for p in by_rank1] == ["checkpoint-3/rng_1.json"]
    tensors = sorted(str(p.relative_to(out)) for p in out.rglob("*.safetensors"))
    assert tensors == [f"checkpoint-3/{name}.safetensors" for name in ("optimizer", "rng_0", "rng_1", "trainable")] + [
        "safety_modules/model.safetensors"
    ]
    assert len((out / "log.jsonl").read_text().splitlines()) == 4
    assert not (out / ".training.lock").exists()  # released at the end


# ---------------------------------------------------------------- the 2-process runs


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_two_processes_train_stage1_as_one_and_resume_on_one_or_two(tiny_dir, records, tmp_path):
    from safety_modules import SafeLlava
    from safety_modules.data.format import read_records
    from safety_modules.output_lock import OutputLock

    two = tmp_path / "two"
    # A second job cannot write into a folder a job holds: both ranks stop at start, nothing written.
    with OutputLock(two, job="training"):
        refused = launch_two("train", recipe(tiny_dir, records, two), tmp_path / "report-refused")
    assert refused.returncode != 0
    assert refused.stderr.count("is being written by another training") >= 2, refused.stderr[-3000:]
    assert sorted(p.name for p in two.iterdir()) == []

    done = launch_two("train", recipe(tiny_dir, records, two), tmp_path / "report-two")
    assert done.returncode == 0, done.stderr[-5000:]
    one = train_here(recipe(tiny_dir, records, tmp_path / "one", gradient_accumulation_steps=2))

    start = SafeLlava.from_pretrained(tiny_dir, seed=0).safety.state_dict()
    assert_same_tensors(modules(two), modules(tmp_path / "one"), start)
    history = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in one.history], rel=1e-5)
    check_sharding(tmp_path / "report-two", [r["id"] for r in read_records(records)], steps=4, per_rank_step=2)
    check_only_main_wrote(two)

    # The checkpoint at step 3 (inside the second epoch) resumes on one process with twice the accumulation ...
    resumed_one = tmp_path / "resumed-one"
    shutil.copytree(two / "checkpoint-3", tmp_path / "ckpt")
    again = recipe(tiny_dir, records, resumed_one, gradient_accumulation_steps=2, resume_from=str(tmp_path / "ckpt"))
    assert train_here(again).global_step == 4
    assert_same_tensors(modules(resumed_one), modules(two), start)
    # ... and on two processes,
    resumed_two = tmp_path / "resumed-two"
    done = launch_two(
        "train", recipe(tiny_dir, records, resumed_two, resume_from=str(tmp_path / "ckpt")), tmp_path / "r2"
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert_same_tensors(modules(resumed_two), modules(two), start)
    assert [r["sample_ids"] for r in ranks(tmp_path / "r2")] == [
        r["sample_ids"][6:] for r in ranks(tmp_path / "report-two")
    ]
    # ... but not with another global batch: refused, and says why.
    with pytest.raises(ValueError, match=r"written by 2 process\(es\) x 2 per device x 1 accumulation = 4 samples"):
        train_here(recipe(tiny_dir, records, tmp_path / "other", resume_from=str(tmp_path / "ckpt")))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_processes_train_stage2_lora_as_one(tiny_dir, records, tmp_path):
    from safety_modules import SafeLlava
    from safety_modules.data.format import read_records

    stage1 = SafeLlava.from_pretrained(tiny_dir, seed=0).safety.save_pretrained(tmp_path / "stage1")
    # No LoRA dropout: its masks come from each process's own random stream (compared in the layout test).
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    two, one = tmp_path / "two", tmp_path / "one"
    settings = dict(stage=2, safety=str(stage1), lora=lora, save_steps=None, learning_rate=2e-2)
    done = launch_two("train", recipe(tiny_dir, records, two, **settings), tmp_path / "report")
    assert done.returncode == 0, done.stderr[-5000:]
    train_here(recipe(tiny_dir, records, one, gradient_accumulation_steps=2, **settings))

    a = load_file(str(two / "lora_adapter" / "adapter_model.safetensors"))
    b = load_file(str(one / "lora_adapter" / "adapter_model.safetensors"))
    start = {k: torch.zeros_like(v) for k, v in a.items() if "lora_B" in k}  # LoRA B starts at zero
    assert_same_tensors(a, b, start)
    assert not (two / "safety_modules").exists()  # stage 2 saves only what it trained
    check_sharding(tmp_path / "report", [r["id"] for r in read_records(records)], steps=4, per_rank_step=2)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_rl_refuses_several_processes(tiny_dir, tmp_path):
    config = {"base": str(tiny_dir), "train_data": [str(tmp_path / "unused.jsonl")], "output_dir": str(tmp_path / "rl")}
    done = launch_two("rl", config, tmp_path / "report")
    assert done.returncode != 0
    assert "the RL stage runs in one process; this job has 2" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "rl").exists()


# ---------------------------------------------------------------- jobs that are not one job


def cli_recipe(tiny_dir, records, tmp_path) -> Path:
    import yaml

    path = tmp_path / "stage1.yaml"
    path.write_text(yaml.safe_dump(recipe(tiny_dir, records, tmp_path / "run")))
    return path


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_8_gpu_config_on_a_cpu_machine_is_refused(tiny_dir, records, tmp_path):
    """The shipped config starts 8 processes; without GPUs each would be a job of its own."""
    config = REPO / "train" / "accelerate_multigpu.yaml"
    done = launch(
        [
            "--config_file",
            str(config),
            "-m",
            "safety_modules.cli",
            "train",
            "stage1",
            str(cli_recipe(tiny_dir, records, tmp_path)),
        ]
    )
    assert done.returncode != 0
    assert (
        done.stderr.count("the launcher started 8 processes (WORLD_SIZE=8) but this one is in a process group of 1")
        == 8
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(300)
def test_cpu_flag_that_starts_one_process_for_two_is_refused(tiny_dir, records, tmp_path):
    done = launch(
        [
            "--cpu",
            "--num_processes",
            "2",
            "-m",
            "safety_modules.cli",
            "train",
            "stage1",
            str(cli_recipe(tiny_dir, records, tmp_path)),
        ]
    )
    assert done.returncode != 0
    assert "accelerate was asked for several CPU processes" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "run").exists()


def test_a_second_job_in_the_same_output_folder_is_refused(tiny_dir, records, tmp_path):
    from safety_modules.output_lock import OutputLock

    out = tmp_path / "run"
    with OutputLock(out, job="training"):
        with pytest.raises(
            RuntimeError, match=r"run is being written by another training \(pid \d+ on .*use another output_dir"
        ):
            train_here(recipe(tiny_dir, records, out))
    assert sorted(p.name for p in out.iterdir()) == []


# ---------------------------------------------------------------- the data layout


def test_micro_batches_are_dealt_whole_so_each_step_is_the_same_on_any_process_count():
    from safety_modules.training.trainer import epoch_order

    n, b = 24, 2
    one = epoch_order(n, seed=3, epoch=1, rank=0, world=1, batch=b)
    for world in (2, 3, 4):
        orders = [epoch_order(n, seed=3, epoch=1, rank=r, world=world, batch=b) for r in range(world)]
        assert sorted(i for o in orders for i in o) == list(range(n))  # every sample once
        # Step s with accumulation a on `world` processes = step s with accumulation a * world on one.
        for j in range(n // (world * b)):
            for r in range(world):
                assert orders[r][j * b : (j + 1) * b] == one[(j * world + r) * b : (j * world + r + 1) * b]
    # An uneven tail is shared: equal counts per rank, none twice.
    orders = [epoch_order(11, seed=0, epoch=0, rank=r, world=2, batch=4) for r in range(2)]
    assert [len(o) for o in orders] == [5, 5] and not set(orders[0]) & set(orders[1])


def test_resume_layout_is_exact_or_refused_with_the_reason():
    from safety_modules.training.distributed import Layout, check_resume_layout

    two = {"processes": 2, "per_device_batch_size": 2, "accumulation": 1}
    check_resume_layout(two, Layout(2, 2, 1), samples=8, dropout=True)  # same layout
    check_resume_layout(two, Layout(1, 2, 2), samples=8, dropout=False)  # same micro-batches
    check_resume_layout(None, Layout(1, 4, 3), samples=7, dropout=True)  # an older single-process checkpoint
    with pytest.raises(ValueError, match="global batch must stay the same.*resume with 2 process"):
        check_resume_layout(two, Layout(1, 2, 1), samples=8, dropout=False)
    with pytest.raises(ValueError, match="per-device batch"):
        check_resume_layout(two, Layout(1, 4, 1), samples=8, dropout=False)
    with pytest.raises(ValueError, match="10 training samples do not split into whole micro-batches .* 2 process"):
        check_resume_layout(two, Layout(1, 2, 2), samples=10, dropout=False)
    with pytest.raises(ValueError, match="dropout draws from each process's own random stream"):
        check_resume_layout(two, Layout(1, 2, 2), samples=8, dropout=True)
