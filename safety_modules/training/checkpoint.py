"""Resumable checkpoints in safetensors + JSON (no pickle).

A checkpoint folder holds everything an exact resume needs: the trained parameters,
the optimizer state (tensors in safetensors, hyper-parameters in JSON), the scheduler
state, the RNG states of Python, NumPy and torch (CPU and CUDA) and the step counter.
The data order is a function of (seed, epoch), so the step counter fixes the position.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PARAMS = "trainable.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
STATE = "trainer_state.json"


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return tensors, {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
    }


def set_rng_state(tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss_next = data["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = data["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def save_checkpoint(
    directory: Path,
    params: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    rank: int = 0,
    is_main: bool = True,
) -> Path:
    """Write a checkpoint; every rank writes its RNG state, the main rank everything else."""
    directory.mkdir(parents=True, exist_ok=True)
    rng_tensors, rng_data = rng_state()
    save_file({k: v.contiguous() for k, v in rng_tensors.items()}, str(directory / f"rng_{rank}.safetensors"))
    (directory / f"rng_{rank}.json").write_text(json.dumps(rng_data))
    if not is_main:
        return directory
    save_file({k: v.detach().float().contiguous().cpu() for k, v in params.items()}, str(directory / PARAMS))
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in opt["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    save_file(tensors, str(directory / OPTIMIZER_TENSORS))
    meta = {
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "scheduler": scheduler.state_dict(),
        **state,
    }
    (directory / STATE).write_text(json.dumps(meta, indent=1))
    return directory


def load_checkpoint(directory: Path, rank: int = 0) -> dict[str, Any]:
    """Read a checkpoint: ``params``, ``optimizer`` (a state dict), ``scheduler``, ``state`` and RNG."""
    meta = json.loads((directory / STATE).read_text())
    opt_meta = meta.pop("optimizer")
    state: dict[int, dict[str, Any]] = {}
    for key, value in load_file(str(directory / OPTIMIZER_TENSORS)).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in opt_meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    rng_file = directory / f"rng_{rank}.safetensors"
    if not rng_file.exists():  # resuming on more ranks than were saved: seed-derived states for the new ones
        rng_file = directory / "rng_0.safetensors"
    return {
        "params": load_file(str(directory / PARAMS)),
        "optimizer": {"state": state, "param_groups": opt_meta["param_groups"]},
        "scheduler": meta.pop("scheduler"),
        "state": meta,
        "rng": (load_file(str(rng_file)), json.loads(rng_file.with_suffix(".json").read_text())),
    }


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    found = [
        p for p in output_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and (p / STATE).exists()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def prune(output_dir: Path, keep: int | None) -> None:
    if keep is None:
        return
    for old in checkpoints(output_dir)[:-keep] if keep > 0 else checkpoints(output_dir):
        shutil.rmtree(old)


def resume(
    resume_from: str | None,
    output_dir: Path,
    params: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int = 0,
) -> tuple[Path, dict[str, Any], tuple[dict[str, torch.Tensor], dict[str, Any]]] | None:
    """Restore ``params``, ``optimizer`` and ``scheduler`` from ``resume_from`` (a folder, or "latest": the newest
    checkpoint in ``output_dir``). Returns (folder, the saved trainer state, the saved RNG state) or None when there
    is nothing to resume. The caller restores the RNG with `set_rng_state` just before its loop, so nothing in
    between draws from it."""
    if resume_from == "latest":
        found = checkpoints(output_dir)
        resume_from = str(found[-1]) if found else None
    if not resume_from:
        return None
    saved = load_checkpoint(Path(resume_from), rank)
    missing = sorted(set(params) - set(saved["params"]))
    if missing:
        raise ValueError(f"checkpoint {resume_from} lacks trained tensors {missing[:3]} (another stage or model?)")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved["params"][name])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return Path(resume_from), saved["state"], saved["rng"]


def save_and_prune(
    output_dir: Path,
    step: int,
    params: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int | None,
    rank: int = 0,
    is_main: bool = True,
) -> None:
    """Write ``output_dir/checkpoint-{step}`` (`save_checkpoint`) and keep only the newest ``keep`` (main rank)."""
    save_checkpoint(output_dir / f"checkpoint-{step}", params, optimizer, scheduler, state, rank, is_main)
    if is_main:
        prune(output_dir, keep)
