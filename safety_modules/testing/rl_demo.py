"""``safevlm demo --rl``: the RL alignment stage end to end on the tiny model, printing each step.

tiny LLaVA -> a yes/no base (its output layer fitted to answer "Yes" or "No" at 0.55 / 0.45 odds
whatever the image, see `tiny_task`) -> synthetic Safe/Unsafe corpus -> GRPO with the rules reward -> the before/after
report on the held-out images. A separate flag, not a step of ``make demo``: it adds ~30-60 s.
"""

from __future__ import annotations

import time
from pathlib import Path


def run_rl_demo(workdir: Path, steps: int = 12, seed: int = 0) -> int:
    from ..training.rl.report import before_after_report
    from ..training.rl.trainer import train_rl
    from .rl_tiny_task import make_rl_corpus, make_yes_no_base, tiny_task_config
    from .tiny import make_tiny

    workdir = Path(workdir)
    start = time.time()
    print(f"[1/4] tiny LLaVA and the synthetic Safe/Unsafe corpus in {workdir}")
    tiny = make_tiny(workdir / "tiny-llava", seed=seed)
    train, heldout = make_rl_corpus(workdir / "corpus", seed=seed)
    print(
        "[2/4] a base that answers 'Yes' (P 0.55) or 'No' (P 0.45) whatever the image (output layer fitted; "
        "the tiny LM is random otherwise)"
    )
    base = make_yes_no_base(tiny, train, workdir / "yes-no-base")
    cfg = tiny_task_config(base, train, workdir / "run", eval_data=[str(heldout)], seed=seed, max_steps=steps)
    print(f"[3/4] GRPO: {steps} steps of 2 prompts x 4 answers, rules reward (yes = Safe, no = Unsafe)")
    result = train_rl(cfg, log=lambda m: print("      " + m))
    print(
        "      KL(k1) = log pi - log pi_ref summed over an answer's tokens, averaged: a sample estimate of "
        "KL(policy || reference), which can be negative on a few samples although the KL itself is not"
    )
    for entry in result.history:
        print(
            f"      step {entry['step']:2d}: reward {entry['reward']:.3f}  judged correct "
            f"{entry['judged_correct']:.2f}  KL(k1) {entry['kl']:.3f}  entropy {entry['entropy']:.3f}"
        )
    print("[4/4] before / after on the held-out images")
    assert result.adapter_dir is not None  # the run was not interrupted
    report = before_after_report(cfg, result.adapter_dir, workdir / "run" / "report")
    print("      " + "\n      ".join(report.read_text().split("## Visual alignment")[0].splitlines()[2:]))
    print(f"      report: {report}; adapter: {result.adapter_dir}")
    print(f"done in {time.time() - start:.0f} s")
    return 0
