"""The training loop for both stages (accelerate: one GPU, DDP, CPU).

Stage 1: the base is frozen; the safety modules learn from LM loss + weight x (CE level
+ CE type). Stage 2: LoRA (peft) on the language model's linear layers; the stage-1
modules are loaded and stay frozen unless ``train_safety_modules`` is set.

Trained weights are kept in float32 while the frozen base runs in its own dtype (bf16
autocast on GPU). Gradient accumulation, clipping, cosine schedule with warmup and the
data order are handled here so that a run resumed from a checkpoint continues exactly
as the uninterrupted run would have: the order of epoch ``e`` is a permutation drawn
from ``seed + e``, data loaders never touch the global RNG, and the RNG, optimizer and
scheduler states are restored from the checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset

from ..data.format import read_records
from ..errors import ConfigError, InputError
from ..metrics import format_metrics, head_metrics
from ..modeling.lora import ADAPTER_DIR
from ..modeling.safe_llava import SafeLlava, count_label_tokens
from . import checkpoint as ckpt
from .config import TrainConfig
from .data import MODEL_INPUTS, SafetyCollator, SafetyDataset
from .distributed import Layout, check_one_job, check_resume_layout, output_lock
from .provenance import training_record

logger = logging.getLogger(__name__)

SAFETY_DIR = "safety_modules"


@dataclass
class TrainResult:
    """What a run produced: where it saved, its loss and evaluation logs, the images it had to skip."""

    output_dir: Path
    global_step: int
    history: list[dict[str, float]] = field(default_factory=list)
    eval_history: list[dict[str, float]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    safety_dir: Path | None = None
    adapter_dir: Path | None = None
    # The record ids this process trained on in this run, in order (how sharding is checked).
    sample_ids: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- model


def build_model(cfg: TrainConfig, device: torch.device) -> SafeLlava:
    model = SafeLlava.from_pretrained(cfg.base, cfg.safety, dtype=cfg.dtype, device=device, seed=cfg.seed)
    model.safety.float()  # master weights in float32 even on a bf16 base
    if cfg.safety_loss_weight is not None:
        model.config.safety_loss_weight = cfg.safety_loss_weight
    model.safety.requires_grad_(bool(cfg.train_safety_modules))
    if cfg.train_safety_modules and (model.config.level_temperature or model.config.type_temperature):
        # Temperatures were fitted to the head as it was; training changes it, so they no longer apply.
        logger.warning(
            "the loaded safety modules are calibrated; training them drops the temperatures "
            "(run `safevlm calibrate` on the result)"
        )
        model.config.level_temperature = model.config.type_temperature = None
    if cfg.stage == 2:
        model.add_lora(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout)
    if cfg.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def set_train_mode(model: SafeLlava, cfg: TrainConfig) -> None:
    """`SafeLlava.train` keeps the base in eval; LoRA dropout and gradient checkpointing need the
    language model in train mode (LLaVA's attention dropout is 0, so nothing else changes)."""
    model.train()
    if cfg.stage == 2 or cfg.gradient_checkpointing:
        model.language_model.train()


# ---------------------------------------------------------------- data


def build_dataset(files, model: SafeLlava, cfg: TrainConfig) -> ConcatDataset:
    parts = []
    for entry in files:
        records = read_records(entry.path, model.config.taxonomy)
        parts.append(
            SafetyDataset(
                records,
                entry.root,
                model.processor,
                model.config.taxonomy,
                model.config.num_image_tokens,
                cfg.max_length,
            )
        )
    return ConcatDataset(parts)


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int, batch: int = 1) -> list[int]:
    """This rank's sample order in ``epoch``: a seeded permutation cut into micro-batches of ``batch``, dealt
    round-robin to the ranks (micro-batch ``j`` of rank ``r`` is the permutation's micro-batch ``j * world + r``).

    Dealing whole micro-batches keeps each optimizer step's micro-batches the same whatever the number of
    processes (for the same per-device and global batch), so N processes train as one does with N times the
    accumulation, and a checkpoint resumes on another process count. The tail that does not fill a round is
    shared evenly; every rank gets ``n // world`` samples (the same number of micro-batches), none twice.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    rounds = n // (world * batch)
    mine = [i for j in range(rounds) for i in perm[(j * world + rank) * batch : (j * world + rank + 1) * batch]]
    tail = (n - rounds * world * batch) // world
    start = rounds * world * batch + rank * tail
    return mine + perm[start : start + tail]


def make_loader(dataset, indices: list[int], batch_size: int, collator, workers: int, seed: int) -> DataLoader:
    # An own generator: creating a loader must not advance the global RNG (exact resume).
    return DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collator,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
    )


def micro_batches(
    dataset, start: int, micro_per_epoch: int, collator, cfg: TrainConfig, rank: int, world: int
) -> Iterator[dict]:
    """This rank's micro-batches from micro-batch ``start`` on, endlessly: epoch ``e`` in its seeded order
    (`epoch_order`), so a resumed run sees the batches the uninterrupted run would have."""
    micro = start
    while True:
        epoch, position = divmod(micro, micro_per_epoch)
        order = epoch_order(len(dataset), cfg.seed, epoch, rank, world, cfg.per_device_batch_size)
        loader = make_loader(
            dataset,
            order[position * cfg.per_device_batch_size :],
            cfg.per_device_batch_size,
            collator,
            cfg.num_workers,
            cfg.seed + epoch,
        )
        for batch in loader:
            micro += 1
            yield batch


def accumulate_gradients(accelerator, wrapped, step_batches: list[dict]) -> dict[str, list[float]]:
    """Forward and backward over the micro-batches of one optimizer step; returns each micro-batch's losses.

    The LM loss is token-weighted over the whole step, on every process: each micro-batch divides its
    summed token loss by the step's label-token count (transformers' ``num_items_in_batch``), so a short
    answer weighs as much per token as a long one whatever micro-batch it is in. accelerate divides each
    micro-batch's loss by the accumulation steps and DDP averages over processes, hence the share below.
    The safety loss stays the mean over samples. Gradients sync on the last micro-batch (accelerate's
    counter, ``accelerator.step``, counts micro-batches); the caller then steps the optimizer.
    """
    tokens = sum(count_label_tokens(batch["labels"]) for batch in step_batches if batch["num_samples"])
    tokens = accelerator.reduce(torch.tensor(tokens, device=accelerator.device), reduction="sum")
    num_items = tokens.float() / (len(step_batches) * accelerator.num_processes)
    losses: dict[str, list[float]] = {"loss": [], "lm_loss": [], "safety_loss": []}
    for batch in step_batches:
        with accelerator.accumulate(wrapped):
            if batch["num_samples"]:
                inputs = {k: batch[k].to(accelerator.device) for k in MODEL_INPUTS}
                output = wrapped(**inputs, num_items_in_batch=num_items)
                accelerator.backward(output.loss)
                for key, values in losses.items():
                    value = getattr(output, key)
                    if value is not None:
                        values.append(value.item())
    return losses


def _dropout_active(model: SafeLlava, cfg: TrainConfig) -> bool:
    """Whether training draws dropout masks (LoRA dropout in stage 2): they come from each process's RNG."""
    set_train_mode(model, cfg)
    return any(isinstance(m, torch.nn.Dropout) and m.training and m.p > 0 for m in model.modules())


def _window_means(window: dict[str, list[float]], accelerator) -> dict[str, float]:
    """The mean of each logged loss over the micro-batches of every process since the last log line."""
    totals = torch.tensor([[sum(v), len(v)] for v in window.values()], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    return {key: total / count for key, (total, count) in zip(window, totals.tolist(), strict=True) if count}


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_head(model: SafeLlava, loader: DataLoader) -> tuple[list[int], list[int], list, list, list]:
    """Head probabilities on a loader (vision tower + safety modules only, no language model)."""
    model.eval()
    levels, types, level_probs, type_probs, skipped = [], [], [], [], []
    for batch in loader:
        skipped += batch["skipped"]
        if not batch["num_samples"]:
            continue
        features = model.vision_features(batch["pixel_values"])
        scores = model.classify(features, batch["head_input_ids"], batch["head_attention_mask"])
        levels += batch["safety_levels"].tolist()
        types += batch["safety_types"].tolist()
        level_probs += scores.level_probs.cpu().tolist()
        type_probs += scores.type_probs.cpu().tolist()
    return levels, types, level_probs, type_probs, skipped


def run_eval(model: SafeLlava, dataset, cfg: TrainConfig, accelerator) -> dict[str, float]:
    from accelerate.utils import gather_object

    indices = list(range(len(dataset)))[accelerator.process_index :: accelerator.num_processes]
    loader = make_loader(dataset, indices, cfg.per_device_batch_size, SafetyCollator(model.processor), 0, cfg.seed)
    parts = gather_object([evaluate_head(model, loader)])
    columns = [sum((list(p[i]) for p in parts), []) for i in range(4)]
    return head_metrics(*columns, type_names=model.config.type_names)


# ---------------------------------------------------------------- the loop


def train(cfg: TrainConfig, stop_after: int | None = None, log: Callable[[str], None] | None = None) -> TrainResult:
    """Run one stage. ``stop_after`` ends the run after that many optimizer steps (having saved a
    checkpoint there), as an interruption would; resuming with ``resume_from`` continues it."""
    from accelerate import Accelerator

    mixed = cfg.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() else "no"
    accelerator = Accelerator(mixed_precision=mixed, gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    check_one_job(accelerator)
    with output_lock(cfg.output_dir, accelerator):
        return _train_locked(cfg, accelerator, stop_after, log)


def _train_locked(
    cfg: TrainConfig, accelerator, stop_after: int | None, log: Callable[[str], None] | None
) -> TrainResult:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    deepspeed = accelerator.state.deepspeed_plugin
    if deepspeed is not None:
        # we feed our own loader, so DeepSpeed cannot infer the micro-batch size ("auto" in ds_zero2.json)
        deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.per_device_batch_size
        if cfg.save_steps or cfg.resume_from:
            raise ConfigError(
                "resumable checkpoints are written for single-GPU and DDP runs; under DeepSpeed "
                "set save_steps and resume_from to null (ZeRO shards the optimizer state)"
            )
    say = log or (lambda msg: accelerator.print(msg))
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    model = build_model(cfg, accelerator.device)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ConfigError("nothing to train: no parameter requires a gradient")
    say(
        f"stage {cfg.stage}: training {sum(p.numel() for p in params.values()):,} parameters "
        f"({len(params)} tensors); base frozen"
    )

    train_set = build_dataset(cfg.train_data, model, cfg)
    eval_set = build_dataset(cfg.eval_data, model, cfg) if cfg.eval_data else None
    collator = SafetyCollator(model.processor)
    rank, world = accelerator.process_index, accelerator.num_processes
    per_rank = len(train_set) // world
    if per_rank == 0:
        raise ConfigError(f"{len(train_set)} training samples cannot feed {world} processes")
    micro_per_epoch = math.ceil(per_rank / cfg.per_device_batch_size)
    accum = cfg.gradient_accumulation_steps
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * micro_per_epoch / accum))

    optimizer = torch.optim.AdamW(params.values(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, total_steps)
    wrapped, optimizer = accelerator.prepare(model, optimizer)

    global_step, history, eval_history, skipped = 0, [], [], []
    rng_to_restore = None
    layout = Layout(world, cfg.per_device_batch_size, accum)
    restored = ckpt.resume(cfg.resume_from, out, params, optimizer, scheduler, rank)
    if restored:
        folder, state, rng_to_restore = restored
        check_resume_layout(state.get("layout"), layout, len(train_set), _dropout_active(model, cfg))
        global_step = state["global_step"]
        history, eval_history = state["history"], state["eval_history"]
        skipped = [tuple(s) for s in state["skipped"]]
        say(f"resumed from {folder} at step {global_step}/{total_steps}")
    if accelerator.is_main_process:
        ckpt.truncate_log(out / "log.jsonl", global_step)  # steps logged after the checkpoint are run again

    def save(step: int) -> None:
        state = {
            "global_step": step,
            "history": history,
            "eval_history": eval_history,
            "skipped": skipped,
            "total_steps": total_steps,
            "layout": layout.to_dict(),
        }
        accelerator.wait_for_everyone()
        ckpt.save_and_prune(out, step, params, optimizer, scheduler, state, cfg.save_total_limit, accelerator)

    def evaluate(step: int) -> None:
        metrics = run_eval(model, eval_set, cfg, accelerator)
        eval_history.append({"step": step, **metrics})
        say(f"eval @ step {step}: {format_metrics(metrics)}")
        set_train_mode(model, cfg)

    bar = tqdm(
        total=total_steps,
        initial=global_step,
        desc=f"stage {cfg.stage}",
        disable=not (cfg.progress_bar and accelerator.is_local_main_process),
    )
    if rng_to_restore is not None:
        ckpt.set_rng_state(*rng_to_restore)  # last, so nothing between here and the loop draws from it
    set_train_mode(model, cfg)
    micro = global_step * accum
    accelerator.step = micro  # accelerate's micro-batch counter decides when a step syncs
    stream = micro_batches(train_set, micro, micro_per_epoch, collator, cfg, rank, world)
    window: dict[str, list[float]] = {"loss": [], "lm_loss": [], "safety_loss": []}
    ran_here = trained_here = 0  # micro-batches and samples seen by this process in this run
    sample_ids: list[str] = []
    while global_step < total_steps and (stop_after is None or global_step < stop_after):
        step_batches = [next(stream) for _ in range(accum)]
        ran_here += accum
        trained_here += sum(batch["num_samples"] for batch in step_batches)
        skipped += [item for batch in step_batches for item in batch["skipped"]]
        sample_ids += [sample_id for batch in step_batches for sample_id in batch.get("ids", [])]
        for key, values in accumulate_gradients(accelerator, wrapped, step_batches).items():
            window[key] += values
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(params.values(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        global_step += 1
        bar.update(1)
        if global_step % cfg.logging_steps == 0 or global_step == total_steps:
            entry = {"step": global_step, "lr": scheduler.get_last_lr()[0]}
            entry.update(_window_means(window, accelerator))
            history.append(entry)
            window = {k: [] for k in window}
            bar.set_postfix(loss=f"{entry.get('loss', float('nan')):.4f}")
            if accelerator.is_main_process:
                out.mkdir(parents=True, exist_ok=True)
                with open(out / "log.jsonl", "a") as f:
                    f.write(json.dumps(entry) + "\n")
        if eval_set is not None and cfg.eval_steps and global_step % cfg.eval_steps == 0:
            evaluate(global_step)
        interrupted = stop_after is not None and global_step >= stop_after
        if (cfg.save_steps and global_step % cfg.save_steps == 0) or (interrupted and global_step < total_steps):
            save(global_step)
    bar.close()
    if ran_here and not trained_here:
        example = f", e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise InputError(
            f"no training sample could be used in {ran_here} batch(es): {len({path for path, _ in skipped})} "
            f"unreadable image(s){example}; "
            "nothing was trained or saved"
        )
    result = TrainResult(out, global_step, history, eval_history, skipped, sample_ids=sample_ids)
    if skipped:
        say(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0][0]}: {skipped[0][1]}")
    if global_step < total_steps:
        return result  # interrupted: the checkpoint holds the state
    if eval_set is not None and not (cfg.eval_steps and global_step % cfg.eval_steps == 0):
        evaluate(global_step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(wrapped)
        if cfg.train_safety_modules:  # the record feeds the model card and `assess`'s untrained warning
            unwrapped.safety.config.training = training_record(
                cfg.stage, global_step, cfg.train_data, train_set, cfg.eval_data, eval_set, eval_history
            )
            result.safety_dir = unwrapped.safety.save_pretrained(out / SAFETY_DIR)
        if cfg.stage == 2:
            result.adapter_dir = unwrapped.save_lora(out / ADAPTER_DIR)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        (out / "metrics.json").write_text(
            json.dumps({"history": history, "eval": eval_history, "skipped": skipped}, indent=1) + "\n"
        )
    return result
