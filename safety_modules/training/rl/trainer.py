"""The RL loop (PPO as published, or GRPO): rollouts, optimisation, checkpoints and exact resume.

Why not ``trl``: trl 1.16 has no PPO trainer any more, and its GRPO trainer computes log-probs by
calling the model with ``input_ids`` (+ ``pixel_values``); our language model must receive input
embeddings in which each image block is [safety tokens B; image tokens], built by
`SafeLlava.build_inputs_embeds`, and the reference is the same model with its adapter switched
off. The loop below is small and its maths (`losses`) is tested on hand-computed cases.

Exactness of resume: RL step ``s`` uses prompts ``s*P .. s*P+P-1`` of an endless sequence of
epoch permutations (epoch ``e`` drawn from ``seed + e``); minibatch orders come from a generator
seeded by (seed, step, pass); sampling and LoRA dropout use the global RNG, whose state is saved
in every checkpoint with the optimizer and scheduler (`training.checkpoint`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import ConfigError
from ...modeling.lora import ADAPTER_DIR
from ...modeling.safe_llava import SafeLlava
from .. import checkpoint as ckpt
from ..distributed import check_one_job, output_lock
from .config import RLConfig
from .data import RLSample, load_samples
from .policy import ActorCritic
from .rewards import make_judge
from .rollout import collect, minibatch_loss

logger = logging.getLogger(__name__)

VALUE_HEAD = "value_head.safetensors"


@dataclass
class RLResult:
    output_dir: Path
    global_step: int
    history: list[dict[str, float]] = field(default_factory=list)
    adapter_dir: Path | None = None
    policy: ActorCritic | None = field(default=None, repr=False)  # the trained policy, in memory


def build_policy(cfg: RLConfig, device: torch.device) -> ActorCritic:
    """`SafeLlava` (base and safety modules frozen) + a fresh LoRA adapter on its language model + value head."""
    model = SafeLlava.from_pretrained(cfg.base, cfg.safety, dtype=cfg.dtype, device=device, seed=cfg.seed)
    model.requires_grad_(False)
    model.add_lora(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout)
    if cfg.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return ActorCritic(model, cfg.temperature, with_value=cfg.algorithm == "ppo").to(device)


def step_samples(samples: list[RLSample], step: int, per_step: int, seed: int, rank: int, world: int) -> list[RLSample]:
    """The prompts of RL step ``step`` for this rank: consecutive positions of the epoch permutations."""
    n, chosen, cache = len(samples), [], {}
    for i in range(step * per_step + rank, (step + 1) * per_step, world):
        epoch, position = divmod(i, n)
        if epoch not in cache:
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        chosen.append(samples[cache[epoch][position]])
    return chosen


def _set_mode(ac: ActorCritic, training: bool) -> None:
    # SafeLlava.train keeps the base in eval; LoRA dropout lives in the language model's adapter layers.
    ac.train(training)
    ac.model.language_model.train(training)


def train_rl(cfg: RLConfig, stop_after: int | None = None, log: Callable[[str], None] | None = None) -> RLResult:
    """Run the RL stage. ``stop_after`` ends after that many RL steps with a checkpoint, as an interruption would."""
    from accelerate import Accelerator

    mixed = cfg.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() else "no"
    accelerator = Accelerator(mixed_precision=mixed)
    check_one_job(accelerator)
    if accelerator.num_processes > 1:
        # Each process would sample its answers from its own copy of the seeded RNG and normalise the rewards
        # within its own share of the batch, so N processes would not train what one trains; not built yet.
        raise ConfigError(
            f"the RL stage runs in one process; this job has {accelerator.num_processes}: rollouts sample from "
            "each process's random stream and rewards are normalised per process, so several processes would "
            "not train the model one process trains. Run `safevlm train rl` without `accelerate launch` "
            "(or with --num_processes 1)"
        )
    with output_lock(cfg.output_dir, accelerator):
        return _train_rl_locked(cfg, accelerator, stop_after, log)


def _train_rl_locked(cfg: RLConfig, accelerator, stop_after: int | None, log: Callable[[str], None] | None) -> RLResult:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    say = log or (lambda msg: accelerator.print(msg))
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    rank, world = accelerator.process_index, accelerator.num_processes
    samples = load_samples(cfg.train_data)
    judge = make_judge(cfg.reward, cfg.reward_classifier, accelerator.device, cfg.reward_classifier_weights)
    ac = build_policy(cfg, accelerator.device)
    params: dict[str, torch.Tensor] = {n: p for n, p in ac.named_parameters() if p.requires_grad}
    say(
        f"RL ({cfg.algorithm}): training {sum(p.numel() for p in params.values()):,} parameters (LoRA"
        f"{' + value head' if ac.value_head is not None else ''}); base and safety modules frozen; "
        f"{len(samples)} prompts, reward {cfg.reward}"
    )

    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(samples) / cfg.prompts_per_step))
    local_rollout = cfg.rollout_batch_size // world
    local_step = cfg.step_batch_size // world
    updates_per_step = cfg.noptepochs * math.ceil(local_rollout / local_step)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, total_steps * updates_per_step)
    wrapped, optimizer = accelerator.prepare(ac, optimizer)

    global_step, history, rng_to_restore = 0, [], None
    restored = ckpt.resume(cfg.resume_from, out, params, optimizer, scheduler, rank)
    if restored:
        folder, state, rng_to_restore = restored
        global_step, history = state["global_step"], state["history"]
        say(f"resumed from {folder} at step {global_step}/{total_steps}")
    if accelerator.is_main_process:
        ckpt.truncate_log(out / "log.jsonl", global_step)  # steps logged after the checkpoint are run again

    def save(step: int) -> None:
        accelerator.wait_for_everyone()
        state = {"global_step": step, "history": history, "total_steps": total_steps}
        ckpt.save_and_prune(out, step, params, optimizer, scheduler, state, cfg.save_total_limit, accelerator)

    bar = tqdm(
        total=total_steps,
        initial=global_step,
        desc=f"rl {cfg.algorithm}",
        disable=not (cfg.progress_bar and accelerator.is_local_main_process),
    )
    if rng_to_restore is not None:
        ckpt.set_rng_state(*rng_to_restore)  # last, so nothing between here and the loop draws from it
    while global_step < total_steps and (stop_after is None or global_step < stop_after):
        chosen = step_samples(samples, global_step, cfg.prompts_per_step, cfg.seed, rank, world)
        _set_mode(ac, False)
        with accelerator.autocast():
            exp = collect(ac, chosen, judge, cfg)
        _set_mode(ac, True)
        window: dict[str, list[float]] = {}
        n = len(exp.scores)
        for epoch in range(cfg.noptepochs):
            order = torch.randperm(
                n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + global_step * 101 + epoch)
            )
            for start in range(0, n, local_step):
                rows_step = order[start : start + local_step]
                micro = [
                    rows_step[i : i + cfg.per_device_batch_size]
                    for i in range(0, len(rows_step), cfg.per_device_batch_size)
                ]
                for k, rows in enumerate(micro):
                    with accelerator.autocast():
                        loss, stats = minibatch_loss(wrapped, exp, rows, cfg)
                    context = accelerator.no_sync(wrapped) if k < len(micro) - 1 else nullcontext()
                    with context:
                        accelerator.backward(loss * len(rows) / len(rows_step))
                    for key, value in stats.items():
                        window.setdefault(key, []).append(value)
                if cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(params.values(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        global_step += 1
        mask = exp.responses.mask.float()
        entry = {
            "step": global_step,
            "lr": scheduler.get_last_lr()[0],
            "reward": exp.scores.mean().item(),
            "judged_correct": (exp.judged_raw * exp.judged_valid).sum().item() / n,
            "na_fraction": 1.0 - exp.judged_valid.float().mean().item(),
            "kl": ((exp.old_logp - exp.ref_logp) * mask).sum(1).mean().item(),
            "response_length": mask.sum(1).mean().item(),
            **{k: sum(v) / len(v) for k, v in window.items()},
        }
        history.append(entry)
        bar.update(1)
        bar.set_postfix(reward=f"{entry['reward']:.3f}", kl=f"{entry['kl']:.3f}", entropy=f"{entry['entropy']:.3f}")
        if accelerator.is_main_process and (global_step % cfg.logging_steps == 0 or global_step == total_steps):
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "log.jsonl", "a") as handle:
                handle.write(json.dumps(entry) + "\n")
        interrupted = stop_after is not None and global_step >= stop_after
        if (cfg.save_steps and global_step % cfg.save_steps == 0) or (interrupted and global_step < total_steps):
            save(global_step)
    bar.close()
    result = RLResult(out, global_step, history, policy=ac)
    if global_step < total_steps:
        return result
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(wrapped)
        result.adapter_dir = unwrapped.model.save_lora(out / ADAPTER_DIR)
        if unwrapped.value_head is not None:
            from safetensors.torch import save_file

            save_file(
                {k: v.detach().float().cpu().contiguous() for k, v in unwrapped.value_head.state_dict().items()},
                str(out / VALUE_HEAD),
            )
        (out / "rl_config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        (out / "metrics.json").write_text(json.dumps({"history": history}, indent=1) + "\n")
    return result
