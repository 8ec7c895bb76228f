"""Checks that several training processes are one job, and the data layout a checkpoint must resume with.

`accelerate launch` starts the processes; nothing in accelerate notices when they do not form one
job: the shipped 8-GPU config on a machine without GPUs starts 8 processes that each see a world
of 1 (each trains, evaluates and saves into the same folder), and ``--cpu --num_processes 2``
without mpirun starts a single process. `check_one_job` stops both at start. `output_lock` keeps a
second job out of an output folder that a running job writes. `Layout` is what a checkpoint records
about the run's batches, so that a resume on another number of processes is exact or refused.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..output_lock import OutputLock, OutputLockedError

CPU_LAUNCH = "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N"


def check_one_job(accelerator: Any) -> None:
    """Raise when the launcher started a different number of processes than the process group holds."""
    launched = os.environ.get("WORLD_SIZE")
    world = accelerator.num_processes
    if launched is not None and int(launched) != world:
        raise ConfigError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}) but this one is in a process "
            f"group of {world} (accelerate: {accelerator.distributed_type.value}): the processes are not one "
            "job and would each train and save on their own. Usually a GPU config (train/accelerate_multigpu.yaml)"
            f" on a machine without GPUs; on CPUs launch with `{CPU_LAUNCH}`"
        )
    cpu_flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if world == 1 and launched is None and cpu_flag and "MASTER_ADDR" in os.environ:
        # `accelerate launch --cpu --num_processes N` (N > 1) sets MASTER_ADDR and starts ONE process unless
        # mpirun is configured; training on as one process would silently change the global batch.
        raise ConfigError(
            "accelerate was asked for several CPU processes (--cpu with --num_processes > 1) but started one: "
            f"its --cpu launcher needs mpirun for that. Launch with `{CPU_LAUNCH}`, or drop --num_processes"
        )


@contextlib.contextmanager
def output_lock(output_dir: str | Path, accelerator: Any) -> Iterator[None]:
    """Hold ``output_dir`` for this job: the main process takes `OutputLock` (job "training"); every process
    raises the same clear error when another job holds it, rather than the others hanging in a collective."""
    from accelerate.utils import broadcast_object_list

    with contextlib.ExitStack() as stack:
        refusal = [None]
        if accelerator.is_main_process:
            try:
                stack.enter_context(
                    OutputLock(output_dir, job="training", hint="wait for it or use another output_dir")
                )
            except RuntimeError as exc:
                refusal = [str(exc)]
        if accelerator.num_processes > 1:
            broadcast_object_list(refusal)
        if refusal[0] is not None:
            raise OutputLockedError(refusal[0])
        yield


@dataclass(frozen=True)
class Layout:
    """How a run feeds its optimizer steps: ``processes`` x ``per_device_batch_size`` x ``accumulation``."""

    processes: int
    per_device_batch_size: int
    accumulation: int

    @property
    def global_batch(self) -> int:
        return self.processes * self.per_device_batch_size * self.accumulation

    def describe(self) -> str:
        return (
            f"{self.processes} process(es) x {self.per_device_batch_size} per device x {self.accumulation} "
            f"accumulation = {self.global_batch} samples per step"
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def check_resume_layout(saved: dict[str, int] | None, now: Layout, samples: int, dropout: bool) -> None:
    """Raise unless resuming a checkpoint written with layout ``saved`` under ``now`` continues exactly.

    The same step then sees the same micro-batches (`trainer.epoch_order` deals whole micro-batches to
    the processes), so the update is the same up to float reduction order, when: the per-device batch
    and the global batch are equal, and, if the number of processes changed, every epoch splits into
    whole rounds of micro-batches under both layouts and no dropout draws from the per-process RNG.
    """
    if saved is None:  # written before layouts were recorded: single-process checkpoints
        saved = {"processes": 1, "per_device_batch_size": now.per_device_batch_size, "accumulation": now.accumulation}
    before = Layout(**saved)
    if before == now:
        return
    why = None
    if before.per_device_batch_size != now.per_device_batch_size or before.global_batch != now.global_batch:
        why = "the per-device batch and the global batch must stay the same"
    elif before.processes != now.processes:
        uneven = [
            layout.processes for layout in (before, now) if samples % (layout.processes * layout.per_device_batch_size)
        ]
        if uneven:
            why = (
                f"the {samples} training samples do not split into whole micro-batches for every process "
                f"with {uneven[0]} process(es), so the epochs would not line up"
            )
        elif dropout:
            why = "dropout draws from each process's own random stream, which another process count changes"
    if why:
        fix = (
            f"resume with {before.processes} process(es), per_device_batch_size={before.per_device_batch_size} "
            f"and gradient_accumulation_steps={before.accumulation}"
        )
        raise ConfigError(
            f"cannot resume exactly: the checkpoint was written by {before.describe()}, this run is "
            f"{now.describe()}; {why}. {fix}"
        )
