"""The tiny RL task (tests and ``safevlm demo --rl``): a tiny base that answers "Yes" or "No" at random,
and a synthetic Safe/Unsafe corpus.

The tiny LLaVA is random, so it never says yes or no and no alignment reward is reachable. We
make it a stand-in for LLaVA-1.5 on the alignment prompts with one honest shortcut: its output
layer (``lm_head``, nothing else) is fitted, with the rest frozen, to answer every prompt with
"Yes" (then EOS) with probability 0.55 and "No" with 0.45 *whatever the image*: each training
prompt is shown with both answers, weighted 0.55 / 0.45. Why not even odds: a fit to 0.5 / 0.5 is
even only up to small per-image residuals, and greedy decoding turns those into hard answers that
depend on the image by chance, so the starting accuracy was luck. The small tilt is far above the
residuals (`answer_odds` shows the odds; `tests/rl` asserts the all-"Yes" start), so
the base answers "Yes" to every image under greedy decoding (`answer_odds` measures the odds per
image) and samples both answers nearly evenly in rollouts. Greedy, it calls every image safe, the
failure the paper reports for LLaVA-1.5 on unsafe images; its balanced accuracy is exactly 0.5.
That base is then the model RL starts from and the reference it is held to; RL (LoRA on the
language model) has to make the answer depend on the image.

Corpus: `data.synth` images; Safe = the photos, Unsafe = captchas, personal documents, bullying
chats and typographic jailbreaks. The benign text images are left out: telling them from the
jailbreak texts needs reading, which a 2-layer random model cannot learn in a CI budget.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data.format import make_record, read_records, write_records
from ..data.unsafe_concepts import ALIGNMENT_PROMPTS
from ..images import decode_image
from ..modeling.safe_llava import SafeLlava
from ..training.rl.config import RLConfig
from ..training.rl.data import RLSample
from ..training.rl.policy import ActorCritic, encode_prompts
from .synth import synthesize


def make_rl_corpus(out: Path, total: int = 90, seed: int = 0) -> tuple[Path, Path]:
    """(train.jsonl, heldout.jsonl): synthetic images with one alignment prompt each and Safe/Unsafe labels."""
    synthesize(out, total, seed=seed, size=112)
    rng = random.Random(seed)
    files = []
    for name, splits in (("rl_train", ("train",)), ("rl_heldout", ("val", "test"))):
        records = []
        for split in splits:
            for r in read_records(out / f"{split}.jsonl"):
                if "benign_text" in r["id"]:
                    continue
                record = make_record(
                    r["id"], r["image"], rng.choice(ALIGNMENT_PROMPTS), "", r["safety"]["level"], r["safety"]["type"]
                )
                kind = r["id"].split("-")[1]  # synth-<kind>-<n>: the kind stands in for the concept
                records.append(
                    {
                        **record,
                        "alignment_label": "Safe" if r["safety"]["level"] == 0 else "Unsafe",
                        "concept": kind.replace("_", " "),
                        "category": kind,
                    }
                )
        files.append(write_records(records, out / f"{name}.jsonl"))
    return files[0], files[1]


def make_yes_no_base(tiny_dir: Path, records_file: Path, out: Path, steps: int = 150, yes_odds: float = 0.55) -> Path:
    """A copy of the tiny base whose ``lm_head`` answers " Yes</s>" with probability ``yes_odds`` and " No</s>"
    otherwise, whatever the image (see the module doc)."""
    model = SafeLlava.from_pretrained(tiny_dir, seed=0)
    tokenizer = model.processor.tokenizer
    records = read_records(records_file)
    images = [decode_image(records_file.parent / r["image"]) for r in records]
    questions = [r["conversations"][0]["value"].split("\n", 1)[1] for r in records]
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in ("Yes", "No")]
    features, targets = [], []
    with torch.no_grad():
        prompts = encode_prompts(model, images, questions, inject_safety_tokens=False)
        for answer in answers:
            ids = torch.tensor([answer] * len(records))
            embeds = torch.cat([prompts.embeds, model.base.get_input_embeddings()(ids)], 1)
            mask = torch.cat([prompts.mask, torch.ones_like(ids)], 1)
            hidden = model.base.model(
                inputs_embeds=embeds, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)
            ).last_hidden_state
            start = prompts.embeds.shape[1] - 1
            features.append(hidden[:, start : start + ids.shape[1]].reshape(-1, hidden.shape[-1]))
            targets.append(ids.reshape(-1))
    head = model.base.lm_head
    head.weight.requires_grad_(True)
    optimizer = torch.optim.Adam([head.weight], lr=0.05)
    for _ in range(steps):
        (yes_x, no_x), (yes_y, no_y) = features, targets
        loss = yes_odds * torch.nn.functional.cross_entropy(head(yes_x), yes_y) + (
            1 - yes_odds
        ) * torch.nn.functional.cross_entropy(head(no_x), no_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.weight.requires_grad_(False)
    model.base.save_pretrained(out)
    model.processor.save_pretrained(out)
    return out


@torch.no_grad()
def answer_odds(model: SafeLlava, samples: Sequence[RLSample]) -> torch.Tensor:
    """(N, 2): the probabilities of "Yes" and of "No" for each sample's image and prompt (no safety tokens),
    as the product of the probabilities of their tokens (EOS left out)."""
    tokenizer = model.processor.tokenizer
    prompts = encode_prompts(model, [s.image for s in samples], [s.prompt for s in samples], False)
    ac = ActorCritic(model, with_value=False)
    odds = []
    for answer in ("Yes", "No"):
        ids = torch.tensor([tokenizer(answer, add_special_tokens=False)["input_ids"]] * len(samples))
        logp = ac(prompts.embeds, prompts.mask, ids, torch.ones_like(ids))[0]
        odds.append(logp.sum(1).exp())
    return torch.stack(odds, 1)


def tiny_task_config(base: Path, train: Path, output_dir: Path, **overrides: object) -> RLConfig:
    """The RL settings that move the yes/no base on this task within seconds on CPU: GRPO steps of
    2 prompts x 4 answers, LoRA r 8, lr 2e-3, rules reward, 4 new tokens; ``overrides`` replace any."""
    values: dict[str, object] = dict(
        algorithm="grpo",
        base=str(base),
        train_data=[str(train)],
        output_dir=str(output_dir),
        seed=0,
        rollout_batch_size=8,
        step_batch_size=8,
        per_device_batch_size=8,
        group_size=4,
        learning_rate=2e-3,
        warmup_steps=1,
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
        reward="rules",
        max_new_tokens=4,
        length_bonus=0.0,
        stop_penalty=-1.0,
        reward_scale=1.0,
        save_steps=None,
        progress_bar=False,
    )
    values.update(overrides)
    return RLConfig.from_dict(values)
