"""Stage 1 and stage 2 on the tiny model and the synthetic corpus: learning, frozen base, exact resume, LoRA."""

from __future__ import annotations

import pytest
import torch

from safety_modules import Gate, SafeLlava, SafetyModules, SafetyPolicy
from safety_modules.data.format import make_record, read_records, write_records
from safety_modules.errors import InputError
from safety_modules.testing.synth import synthesize
from safety_modules.training import TrainConfig, train
from safety_modules.training.checkpoint import checkpoints
from tests.training.helpers import base_digest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    synthesize(out, 150, seed=0, size=224)
    # one held-out file from the val and test splits: more samples, a steadier AUROC
    write_records(read_records(out / "val.jsonl") + read_records(out / "test.jsonl"), out / "heldout.jsonl")
    return out


def config(tiny_dir, corpus, out, **overrides):
    values = dict(
        stage=1,
        base=str(tiny_dir),
        train_data=[str(corpus / "train.jsonl")],
        output_dir=str(out),
        seed=0,
        per_device_batch_size=8,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        warmup_steps=5,
        logging_steps=5,
        num_workers=0,
        progress_bar=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_stage1_learns_and_leaves_the_base_alone(tiny_dir, corpus, tmp_path):
    before = base_digest(SafeLlava.from_pretrained(tiny_dir, seed=0).base)
    cfg = config(
        tiny_dir,
        corpus,
        tmp_path / "run",
        max_steps=25,
        learning_rate=2e-3,
        warmup_steps=3,
        eval_data=[str(corpus / "heldout.jsonl")],
    )
    result = train(cfg)
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-2:]) / 2 < 0.85 * sum(losses[:2]) / 2, losses
    auroc = result.eval_history[-1]["risk_auroc"]
    print("held-out head metrics:", result.eval_history[-1])
    # Seen here: about 0.8 on the 46 held-out images after 40 steps; an untrained or broken head scores ~0.5.
    assert auroc > 0.65, result.eval_history[-1]
    saved = SafetyModules.from_pretrained(result.safety_dir)
    model = SafeLlava.from_pretrained(tiny_dir, saved)
    assert base_digest(model.base) == before
    fresh = SafeLlava.from_pretrained(tiny_dir, seed=0).safety
    assert not torch.equal(saved.head.query, fresh.head.query)  # the saved modules are the trained ones


def test_resume_is_exact(tiny_dir, corpus, tmp_path):
    # 7 records, batches of 2, 2 per step: epochs are 4 micro-batches long, so the run crosses epoch
    # boundaries and the stop at step 3 (micro-batch 6) falls inside the second epoch, in its reshuffled order.
    write_records(read_records(corpus / "train.jsonl")[:7], corpus / "tiny_train.jsonl")
    overrides = dict(
        max_steps=6,
        per_device_batch_size=2,
        gradient_accumulation_steps=2,
        warmup_steps=1,
        logging_steps=1,
        learning_rate=5e-3,
        train_data=[str(corpus / "tiny_train.jsonl")],
    )
    full = train(config(tiny_dir, corpus, tmp_path / "full", **overrides))
    part = train(config(tiny_dir, corpus, tmp_path / "part", **overrides), stop_after=3)
    assert part.global_step == 3 and part.safety_dir is None
    assert [c.name for c in checkpoints(tmp_path / "part")] == ["checkpoint-3"]
    resumed = train(config(tiny_dir, corpus, tmp_path / "part", resume_from="latest", **overrides))
    assert resumed.global_step == 6
    a = SafetyModules.from_pretrained(full.safety_dir).state_dict()
    b = SafetyModules.from_pretrained(resumed.safety_dir).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    start = SafeLlava.from_pretrained(tiny_dir, seed=0).safety.state_dict()
    assert any(not torch.allclose(start[k], a[k]) for k in a)  # training moved the weights
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], abs=1e-5)


def test_stage2_lora_saves_reloads_and_changes_output(tiny_dir, corpus, tmp_path):
    stage1 = SafeLlava.from_pretrained(tiny_dir, seed=0).safety.save_pretrained(tmp_path / "stage1")
    # a training file with one unreadable image: reported and skipped, training goes on
    records = read_records(corpus / "train.jsonl")[:24]
    (corpus / "broken.png").write_bytes(b"not an image")
    records.append(make_record("broken", "broken.png", "What is this?", "A picture.", 0, "safe"))
    write_records(records, corpus / "with_broken.jsonl")
    cfg = config(
        tiny_dir,
        corpus,
        tmp_path / "stage2",
        stage=2,
        safety=str(stage1),
        max_steps=4,
        train_data=[str(corpus / "with_broken.jsonl")],
        per_device_batch_size=5,
        learning_rate=5e-2,
        lora={"r": 8, "alpha": 16, "dropout": 0.05},
    )
    result = train(cfg)
    assert [p for p, _ in result.skipped] == [str(corpus / "broken.png")]
    assert result.safety_dir is None and (result.adapter_dir / "adapter_config.json").exists()
    assert (result.adapter_dir / "adapter_model.safetensors").exists()

    from safety_modules.training.data import SafetyCollator, SafetyDataset

    plain = SafeLlava.from_pretrained(tiny_dir, stage1)
    before = base_digest(plain.base)
    dataset = SafetyDataset(records[:2], corpus, plain.processor, plain.config.taxonomy, 576)
    batch = SafetyCollator(plain.processor)([dataset[0], dataset[1]])
    inputs = {k: batch[k] for k in ("input_ids", "pixel_values", "attention_mask")}
    with torch.no_grad():
        reference = plain(**inputs).logits
        plain.load_lora(result.adapter_dir)
        adapted = plain(**inputs).logits
        again = SafeLlava.from_pretrained(tiny_dir, stage1, lora=result.adapter_dir)
        reloaded = again(**inputs).logits
    # The gate generates through the adapted language model too.
    [answer] = Gate(again, SafetyPolicy.allow_all()).generate(
        corpus / records[0]["image"], "What is shown?", max_new_tokens=3, do_sample=False
    )
    assert answer.decision.action == "allow" and answer.token_ids
    assert (adapted - reference).abs().max() > 1e-3  # the adapter changes the output
    assert torch.allclose(adapted, reloaded)  # and reloads to the same model
    assert base_digest(plain.base) == before  # base weights untouched under the adapter
    assert not any(p.requires_grad for n, p in plain.named_parameters() if not n.startswith("safety."))


def test_a_training_file_with_no_readable_image_is_an_error(tiny_dir, corpus, tmp_path):
    for name in ("bad1.png", "bad2.png"):
        (tmp_path / name).write_bytes(b"not an image")
    records = [make_record(n, n, "What is this?", "A picture.", 0, "safe") for n in ("bad1.png", "bad2.png")]
    write_records(records, tmp_path / "unreadable.jsonl")
    cfg = config(tiny_dir, corpus, tmp_path / "run", train_data=[str(tmp_path / "unreadable.jsonl")], max_steps=2)
    with pytest.raises(InputError, match=r"no training sample could be used .* 2 unreadable image"):
        train(cfg)
    assert not (tmp_path / "run" / "safety_modules").exists()


def test_stage2_needs_stage1_modules(tiny_dir, corpus, tmp_path):
    with pytest.raises(ValueError, match="stage-1 safety modules"):
        config(tiny_dir, corpus, tmp_path, stage=2)


def test_train_cli_runs_a_recipe(tiny_dir, corpus, tmp_path, capsys):
    import yaml

    from safety_modules.cli import main

    recipe = tmp_path / "stage1.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "stage": 1,
                "base": str(tiny_dir),
                "train_data": [str(corpus / "train.jsonl")],
                "output_dir": str(tmp_path / "run"),
                "max_steps": 5,
                "num_workers": 0,
                "progress_bar": False,
            }
        )
    )
    assert (
        main(
            [
                "train",
                "stage1",
                str(recipe),
                "--set",
                "per_device_batch_size=2",
                "--set",
                "gradient_accumulation_steps=1",
                "--max-steps",
                "2",
            ]
        )
        == 0
    )
    assert (tmp_path / "run" / "safety_modules" / "model.safetensors").exists()
    assert (
        len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 1
    )  # max_steps 2 (from the CLI), logged at the end
    assert main(["train", "stage2", str(recipe)]) == 2  # a stage-1 recipe run as stage 2: one clear error
    assert "stage 1 recipe" in capsys.readouterr().err


def test_gradient_accumulation_weighs_every_answer_token_alike(tiny_dir, tmp_path):
    """4 micro-batches of 1 give the gradient of 1 batch of 4 when the answers have different lengths
    (the LM loss is token-weighted over the step, as transformers does with ``num_items_in_batch``)."""
    from accelerate import Accelerator

    from safety_modules.training.data import SafetyCollator, SafetyDataset
    from safety_modules.training.trainer import accumulate_gradients

    from ..conftest import random_image

    answers = ["No.", "A cat on a sofa, sleeping in the sun next to a green cushion and a book.", "Yes.", "A dog."]
    records = []
    for i, answer in enumerate(answers):
        random_image(i).save(tmp_path / f"{i}.png")
        records.append(make_record(str(i), f"{i}.png", "What is shown?", answer, 0, "safe"))

    def gradients(batch_size: int) -> dict[str, torch.Tensor]:
        model = SafeLlava.from_pretrained(tiny_dir, seed=0)
        model.safety.requires_grad_(True)
        dataset = SafetyDataset(records, tmp_path, model.processor, model.config.taxonomy, 576)
        collate = SafetyCollator(model.processor)
        batches = [collate([dataset[j] for j in range(i, i + batch_size)]) for i in range(0, 4, batch_size)]
        if batch_size == 1:  # the answers' token counts differ a lot: a plain mean per micro-batch would show
            counts = [int((b["labels"] != -100).sum()) for b in batches]
            assert max(counts) > 3 * min(counts), counts
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=len(batches))
        wrapped = accelerator.prepare(model)
        model.train()
        losses = accumulate_gradients(accelerator, wrapped, batches)
        assert len(losses["lm_loss"]) == len(batches)
        return {n: p.grad.clone() for n, p in model.safety.named_parameters() if p.grad is not None}

    one_batch, micro = gradients(4), gradients(1)
    assert "llm_tokens" in one_batch  # the LM loss reaches the safety tokens B
    assert one_batch.keys() == micro.keys()
    for name in one_batch:
        torch.testing.assert_close(
            micro[name], one_batch[name], rtol=1e-4, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}"
        )
