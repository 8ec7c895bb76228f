"""``make demo``: the main job on the built-in tiny model, printing each step as it goes.

tiny LLaVA -> synthetic risk corpus -> stage 1 for a short budget -> held-out head
metrics -> the trained head's assessment of one safe and one risky held-out image.
The trained modules are saved under the workdir.
"""
from __future__ import annotations

import time
from pathlib import Path


def format_scores(name: str, level_probs, type_probs, config) -> str:
    """One readable line per image: top level and top type with their probabilities."""
    level = int(level_probs.argmax())
    type_ = int(type_probs.argmax())
    return (f"{name}: level={config.level_names[level]} ({float(level_probs[level]):.2f}) "
            f"type={config.type_names[type_]} ({float(type_probs[type_]):.2f})")


def run_demo(workdir: Path, steps: int = 80, corpus_size: int = 200, seed: int = 0) -> int:
    from .data.format import question_text, read_records
    from .data.synth import synthesize
    from .images import decode_image
    from .metrics import format_metrics
    from .tiny import make_tiny
    from .training import TrainConfig, train
    from .wrapper import SafeLlava

    workdir = Path(workdir)
    start = time.time()
    base_dir = workdir / "tiny-llava"
    print(f"[1/5] building the tiny LLaVA-1.5 (336 px, 576 image tokens) in {base_dir}")
    make_tiny(base_dir, seed=seed)

    corpus = workdir / "corpus"
    print(f"[2/5] generating a {corpus_size}-image synthetic risk corpus in {corpus}")
    manifest = synthesize(corpus, corpus_size, seed=seed, progress=lambda m: print("      " + m))
    print(f"      splits: {manifest['splits']}")

    run_dir = workdir / "stage1"
    print(f"[3/5] stage 1: {steps} steps of 8 images, base frozen, safety modules trained")
    cfg = TrainConfig(
        stage=1, base=str(base_dir), train_data=[str(corpus / "train.jsonl")], eval_data=[str(corpus / "test.jsonl")],
        output_dir=str(run_dir), seed=seed, max_steps=steps, per_device_batch_size=8, gradient_accumulation_steps=1,
        learning_rate=1e-3, warmup_steps=10, logging_steps=max(1, steps // 4), num_workers=0, progress_bar=False,
    )
    result = train(cfg, log=lambda m: print("      " + m))
    for entry in result.history:
        print(f"      step {entry['step']:4d}: loss {entry['loss']:.3f} (safety CE {entry['safety_loss']:.3f})")

    print("[4/5] held-out head metrics (test split, never trained on)")
    print("      " + format_metrics(result.eval_history[-1]))

    print(f"[5/5] the trained head (saved in {result.safety_dir}) on held-out images")
    model = SafeLlava.from_pretrained(base_dir, result.safety_dir)
    test = read_records(corpus / "test.jsonl")
    picks = [next(r for r in test if r["safety"]["level"] == 0), next(r for r in test if r["safety"]["level"] > 0)]
    images = [decode_image(corpus / r["image"]) for r in picks]
    scores = model.assess(images, [question_text(r) for r in picks])
    for record, lp, tp in zip(picks, scores.level_probs, scores.type_probs):
        truth = f"truth: level {record['safety']['level']}, {record['safety']['type']}"
        print("      " + format_scores(record["image"], lp, tp, model.config) + f"  [{truth}]")
    print(f"done in {time.time() - start:.0f} s")
    return 0
