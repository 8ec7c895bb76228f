"""Resumable checkpoints in safetensors + JSON (no pickle), written so that a kill at any moment loses nothing.

A checkpoint folder holds everything an exact resume needs: the trained parameters,
the optimizer state (tensors in safetensors, hyper-parameters in JSON), the scheduler
state, the RNG states of Python, NumPy and torch (CPU and CUDA) and the step counter.
The data order is a function of (seed, epoch), so the step counter fixes the position.

Crash safety: every file is written to a temporary name in the same folder, fsynced and renamed over
its final name, and the folder is fsynced; a marker (``COMPLETE``: the files and their sizes) is written
the same way after every file of every rank. Only a folder with its marker counts as a checkpoint:
``latest`` passes over the others with a warning that names them. Pruning removes an old checkpoint's
marker first, so a kill in the middle of a prune leaves an incomplete folder, never a broken "complete" one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import ModelError

logger = logging.getLogger(__name__)

PARAMS = "trainable.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
STATE = "trainer_state.json"
COMPLETE = "COMPLETE"  # the marker, written last: {"files": {name: size in bytes}}

# Test hook: SIGKILL this process at a named write event, "FOLDER/FILE:temp" (the temporary file written and
# fsynced, not renamed), "FOLDER/FILE:renamed" or "FOLDER/COMPLETE:removed" (a prune), so a test can kill a real
# run at any point of a checkpoint write. Unset in normal use.
KILL_AT_ENV = "SAFEVLM_TEST_KILL_AT"


class CheckpointError(ModelError):
    """A checkpoint cannot be resumed from: missing, incomplete (its write was interrupted) or unreadable."""


def _event(path: Path, what: str) -> None:
    if os.environ.get(KILL_AT_ENV) == f"{path.parent.name}/{path.name}:{what}":
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(temporary path)``: a temporary file in the same folder, fsynced, renamed
    over ``path``, the folder fsynced. A reader (or a kill) sees the old file or the whole new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        _event(path, "temp")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    _event(path, "renamed")


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def _write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    write_atomic(path, lambda tmp: save_file(dict(tensors), str(tmp)))


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
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Write a checkpoint; every rank writes its RNG state, the main rank everything else and, once every rank
    is done (``barrier``: the caller's wait-for-everyone; called by every rank), the `COMPLETE` marker."""
    if is_main:
        if directory.exists():  # left by an interrupted write or an earlier run: nothing of it may count
            (directory / COMPLETE).unlink(missing_ok=True)
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        _fsync_dir(directory.parent)
    barrier()
    directory.mkdir(parents=True, exist_ok=True)
    rng_tensors, rng_data = rng_state()
    _write_tensors(directory / f"rng_{rank}.safetensors", {k: v.contiguous() for k, v in rng_tensors.items()})
    _write_text(directory / f"rng_{rank}.json", json.dumps(rng_data))
    if is_main:
        _write_tensors(directory / PARAMS, {k: v.detach().float().contiguous().cpu() for k, v in params.items()})
        opt = optimizer.state_dict()
        tensors, scalars = {}, {}
        for index, values in opt["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
                else:
                    scalars[f"{index}.{key}"] = value
        _write_tensors(directory / OPTIMIZER_TENSORS, tensors)
        meta = {
            "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
            "scheduler": scheduler.state_dict(),
            **state,
        }
        _write_text(directory / STATE, json.dumps(meta, indent=1))
    barrier()
    if is_main:
        files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if not p.name.startswith(".")}
        _write_text(directory / COMPLETE, json.dumps({"files": files}, indent=1))
    return directory


def incomplete_reason(directory: Path) -> str | None:
    """Why ``directory`` is not a complete checkpoint (None when it is): no marker, or a file the marker
    lists is missing or has another size."""
    try:
        files = json.loads((directory / COMPLETE).read_text())["files"]
    except FileNotFoundError:
        return f"no {COMPLETE} marker (its write was interrupted)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {COMPLETE} marker ({exc})"
    for name, size in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def load_checkpoint(directory: Path, rank: int = 0) -> dict[str, Any]:
    """Read a complete checkpoint: ``params``, ``optimizer`` (a state dict), ``scheduler``, ``state`` and RNG.
    Raises `CheckpointError` naming the folder and the problem when it is missing, incomplete or unreadable."""
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist (or is not a folder)")
    reason = incomplete_reason(directory)
    if reason:
        raise CheckpointError(f"checkpoint {directory} is incomplete: {reason}")
    current = directory / STATE
    try:
        meta = json.loads(current.read_text())
        opt_meta = meta.pop("optimizer")
        state: dict[int, dict[str, Any]] = {}
        current = directory / OPTIMIZER_TENSORS
        for key, value in load_file(str(current)).items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        for key, value in opt_meta["scalars"].items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        rng_file = directory / f"rng_{rank}.safetensors"
        if not rng_file.exists():  # resuming on more ranks than were saved: seed-derived states for the new ones
            rng_file = directory / "rng_0.safetensors"
        current = directory / PARAMS
        params = load_file(str(current))
        current = rng_file
        rng_tensors = load_file(str(current))
        current = rng_file.with_suffix(".json")
        rng_data = json.loads(current.read_text())
        return {
            "params": params,
            "optimizer": {"state": state, "param_groups": opt_meta["param_groups"]},
            "scheduler": meta.pop("scheduler"),
            "state": meta,
            "rng": (rng_tensors, rng_data),
        }
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise CheckpointError(
            f"checkpoint {directory}: {current.name} is unreadable ({type(exc).__name__}: {exc})"
        ) from exc


def _folders(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in ``output_dir`` (their `COMPLETE` marker written), oldest first."""
    return [p for p in _folders(output_dir) if (p / COMPLETE).is_file()]


def latest(output_dir: Path, warn: Callable[[str], None] = logger.warning) -> Path | None:
    """The newest complete checkpoint in ``output_dir`` (None when there is none). Newer folders whose write
    was interrupted are passed over, and ``warn`` names them."""
    chosen = None
    skipped = []
    for folder in reversed(_folders(output_dir)):
        reason = incomplete_reason(folder)
        if reason is None:
            chosen = folder
            break
        skipped.append(f"{folder.name} ({reason})")
    if skipped:
        warn(
            f"skipping incomplete checkpoint(s) in {output_dir}: {'; '.join(skipped)}; "
            + (f"resuming from {chosen.name}" if chosen else "no complete checkpoint is left")
        )
    return chosen


def prune(output_dir: Path, keep: int | None) -> None:
    """Remove all but the newest ``keep`` complete checkpoints (each loses its marker before its files), and the
    folders of interrupted writes older than the newest complete checkpoint."""
    if keep is None:
        return
    complete = checkpoints(output_dir)
    if complete:
        for folder in _folders(output_dir):
            if folder not in complete and int(folder.name.split("-")[1]) < int(complete[-1].name.split("-")[1]):
                shutil.rmtree(folder)
    for old in complete[:-keep] if keep > 0 else complete:
        (old / COMPLETE).unlink()
        _fsync_dir(old)
        _event(old / COMPLETE, "removed")
        shutil.rmtree(old)


def truncate_log(path: Path, step: int) -> None:
    """Keep the lines of a JSONL step log up to ``step`` (all of them when resuming there, none when starting
    at 0), dropping later steps and a line cut short by a kill, so a resumed run does not log a step twice."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int) and entry["step"] <= step:
            kept.append(line + "\n")
    _write_text(path, "".join(kept))


def resume(
    resume_from: str | None,
    output_dir: Path,
    params: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int = 0,
) -> tuple[Path, dict[str, Any], tuple[dict[str, torch.Tensor], dict[str, Any]]] | None:
    """Restore ``params``, ``optimizer`` and ``scheduler`` from ``resume_from`` (a folder, or "latest": the newest
    complete checkpoint in ``output_dir``). Returns (folder, the saved trainer state, the saved RNG state) or None
    when there is nothing to resume: "latest" with no complete checkpoint starts at step 0 with a warning (one
    command serves a job's first start and every restart). The caller restores the RNG with `set_rng_state` just
    before its loop, so nothing in between draws from it. A named folder that cannot be used is a `CheckpointError`."""
    if not resume_from:
        return None
    warn = logger.warning if rank == 0 else (lambda message: None)
    if resume_from == "latest":
        found = latest(output_dir, warn)
        if found is None:
            warn(f"--resume-from latest: no complete checkpoint in {output_dir}; starting from step 0")
            return None
        resume_from = str(found)
    saved = load_checkpoint(Path(resume_from), rank)
    missing = sorted(set(params) - set(saved["params"]))
    if missing:
        raise CheckpointError(f"checkpoint {resume_from} lacks trained tensors {missing[:3]} (another stage or model?)")
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
    processes: Any = None,
) -> None:
    """Write ``output_dir/checkpoint-{step}`` (`save_checkpoint`) and keep only the newest ``keep`` (main rank).

    ``processes``: the run's `accelerate.Accelerator` (or `PartialState`): its rank, whether it is the main
    process and its barrier; None for a single process."""
    rank = processes.process_index if processes is not None else 0
    is_main = processes.is_main_process if processes is not None else True
    barrier = processes.wait_for_everyone if processes is not None else (lambda: None)
    save_checkpoint(output_dir / f"checkpoint-{step}", params, optimizer, scheduler, state, rank, is_main, barrier)
    if is_main:
        prune(output_dir, keep)
