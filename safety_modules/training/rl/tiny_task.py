"""The tiny RL task (tests and ``safevlm demo --rl``): a tiny base that answers "Yes" or "No" at random,
and a synthetic Safe/Unsafe corpus.

The tiny LLaVA is random, so it never says yes or no and no alignment reward is reachable. We
make it a stand-in for LLaVA-1.5 on the alignment prompts with one honest shortcut: its output
layer (``lm_head``, nothing else) is fitted, with the rest frozen, to answer every prompt with
"Yes" or "No" (then EOS) at even odds *whatever the image*: each training prompt is shown with
both answers. That base is then the model RL starts from and the reference it is held to; RL
(LoRA on the language model) has to make the answer depend on the image.

Corpus: `data.synth` images; Safe = the photos, Unsafe = captchas, personal documents, bullying
chats and typographic jailbreaks. The benign text images are left out: telling them from the
jailbreak texts needs reading, which a 2-layer random model cannot learn in a CI budget.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from ...data.format import make_record, read_records, write_records
from ...data.synth import synthesize
from ...data.unsafe_concepts import ALIGNMENT_PROMPTS
from ...images import decode_image
from ...wrapper import SafeLlava
from .policy import encode_prompts


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
                record = make_record(r["id"], r["image"], rng.choice(ALIGNMENT_PROMPTS), "",
                                     r["safety"]["level"], r["safety"]["type"])
                kind = r["id"].split("-")[1]  # synth-<kind>-<n>: the kind stands in for the concept
                records.append({**record, "alignment_label": "Safe" if r["safety"]["level"] == 0 else "Unsafe",
                                "concept": kind.replace("_", " "), "category": kind})
        files.append(write_records(records, out / f"{name}.jsonl"))
    return files[0], files[1]


def make_yes_no_base(tiny_dir: Path, records_file: Path, out: Path, steps: int = 150) -> Path:
    """A copy of the tiny base whose ``lm_head`` answers " Yes</s>" or " No</s>" at even odds (see the module doc)."""
    model = SafeLlava.from_pretrained(tiny_dir, seed=0)
    tokenizer = model.processor.tokenizer
    records = read_records(records_file)
    images = [decode_image(records_file.parent / r["image"]) for r in records]
    questions = [r["conversations"][0]["value"].split("\n", 1)[1] for r in records]
    features, targets = [], []
    with torch.no_grad():
        prompts = encode_prompts(model, images, questions, inject_safety_tokens=False)
        for answer in ("Yes", "No"):
            ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([ids] * len(records))
            embeds = torch.cat([prompts.embeds, model.base.get_input_embeddings()(ids)], 1)
            mask = torch.cat([prompts.mask, torch.ones_like(ids)], 1)
            hidden = model.base.model(inputs_embeds=embeds, attention_mask=mask,
                                      position_ids=(mask.cumsum(1) - 1).clamp(min=0)).last_hidden_state
            start = prompts.embeds.shape[1] - 1
            features.append(hidden[:, start:start + ids.shape[1]].reshape(-1, hidden.shape[-1]))
            targets.append(ids.reshape(-1))
    features, targets = torch.cat(features), torch.cat(targets)
    head = model.base.lm_head
    head.weight.requires_grad_(True)
    optimizer = torch.optim.Adam([head.weight], lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(features), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.weight.requires_grad_(False)
    model.base.save_pretrained(out)
    model.processor.save_pretrained(out)
    return out
