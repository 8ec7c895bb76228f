"""CPU time per stage-1 optimizer step on the tiny model (batch 8, no accumulation).

Runs stage 1 twice on a small synthetic corpus, for WARM and WARM + STEPS steps, and
divides the difference in process CPU time (all threads) and in wall time by STEPS, so
model loading and data setup cancel out. Usage: python bench/stage1_step_time.py [STEPS]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from safety_modules.testing.synth import synthesize
from safety_modules.testing.tiny import make_tiny
from safety_modules.training import TrainConfig, train

WARM = 2


def run(base: Path, corpus: Path, steps: int) -> tuple[float, float]:
    cfg = TrainConfig(
        stage=1,
        base=str(base),
        train_data=[str(corpus / "train.jsonl")],
        output_dir=tempfile.mkdtemp(),
        seed=0,
        max_steps=steps,
        per_device_batch_size=8,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        warmup_steps=1,
        num_workers=0,
        progress_bar=False,
    )
    cpu, wall = time.process_time(), time.perf_counter()
    train(cfg, log=lambda _: None)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    work = Path(tempfile.mkdtemp())
    base = make_tiny(work / "tiny")
    synthesize(work / "corpus", 120, seed=0)
    short = run(base, work / "corpus", WARM)
    long = run(base, work / "corpus", WARM + steps)
    print(f"torch threads: {torch.get_num_threads()}")
    print(
        f"stage 1, tiny model, batch 8: {(long[0] - short[0]) / steps:.3f} s CPU time per step, "
        f"{(long[1] - short[1]) / steps:.3f} s wall per step ({steps} steps)"
    )


if __name__ == "__main__":
    main()
