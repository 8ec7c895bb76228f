"""``make demo``: the main job on the built-in tiny model, printing each step as it goes.

tiny LLaVA -> synthetic risk corpus -> stage 1 for a short budget -> held-out head
metrics, then calibration (temperatures and thresholds from the val split) -> gated
answers for one safe and one risky held-out image -> a risk scan of the corpus (vision
tower + safety modules only) with its HTML report. Everything is written under the workdir.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def run_demo(workdir: Path, steps: int = 80, corpus_size: int = 200, seed: int = 0) -> int:
    from ..calibration import Target
    from ..calibration_report import run_calibration, summary_lines
    from ..data.format import question_text, read_records
    from ..evaluation.head import load_labelled
    from ..gate import Gate
    from ..images import decode_image
    from ..metrics import format_metrics
    from ..modeling.safe_llava import SafeLlava
    from ..policy import SafetyPolicy
    from ..scan import ScanSettings, run_scan
    from ..scan.report import write_report
    from ..training import TrainConfig, train
    from .synth import synthesize
    from .tiny import make_tiny

    workdir = Path(workdir)
    start = time.time()
    base_dir = workdir / "tiny-llava"
    print(f"[1/6] building the tiny LLaVA-1.5 (336 px, 576 image tokens) in {base_dir}")
    make_tiny(base_dir, seed=seed)

    corpus = workdir / "corpus"
    print(f"[2/6] generating a {corpus_size}-image synthetic risk corpus in {corpus}")
    manifest = synthesize(corpus, corpus_size, seed=seed, progress=lambda m: print("      " + m))
    print(f"      splits: {manifest['splits']}")

    run_dir = workdir / "stage1"
    print(f"[3/6] stage 1: {steps} steps of 8 images, base frozen, safety modules trained")
    cfg = TrainConfig(
        stage=1,
        base=str(base_dir),
        train_data=[str(corpus / "train.jsonl")],
        eval_data=[str(corpus / "test.jsonl")],
        output_dir=str(run_dir),
        seed=seed,
        max_steps=steps,
        per_device_batch_size=8,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        warmup_steps=10,
        logging_steps=max(1, steps // 4),
        num_workers=0,
        progress_bar=False,
    )
    evals: list[str] = []

    def log(message: str) -> None:
        if message.startswith("eval @ step"):
            evals.append(message)  # printed below, in step order with the loss lines (which come after training)
        else:
            print("      " + message)

    result = train(cfg, log=log)
    lines = [
        (e["step"], 0, f"step {e['step']:4d}: loss {e['loss']:.3f} (safety CE {e['safety_loss']:.3f})")
        for e in result.history
    ]
    lines += [(e["step"], 1, message) for e, message in zip(result.eval_history, evals)]
    for _, _, line in sorted(lines, key=lambda x: x[:2]):
        print("      " + line)

    print("[4/6] held-out head metrics (test split, never trained on)")
    print("      " + format_metrics(result.eval_history[-1]))

    # A short CPU run leaves the head's probabilities off and the shipped thresholds (0.5) unsuited, so
    # `safevlm calibrate` fits temperatures and chooses the thresholds on the validation split; the
    # calibrated modules and their policy file serve the gate and the scan.
    safety_dir = workdir / "calibrated"
    target = Target(recall=0.9, max_over_refusal=0.1)
    print(f"      calibration on the val split ({target.describe()}), test split held out -> {safety_dir}")
    calibration = run_calibration(
        SafeLlava.from_pretrained(base_dir, result.safety_dir),
        result.safety_dir,
        load_labelled(corpus / "val.jsonl"),
        safety_dir,
        target=target,
        test_items=load_labelled(corpus / "test.jsonl"),
        batch_size=16,
    )
    for line in summary_lines(calibration):
        print("      " + line)
    policy_file = calibration.policy_file
    policy = SafetyPolicy.from_yaml(policy_file)
    print(
        f"[5/6] gated answers: calibrated modules ({safety_dir}), policy {policy_file} (thresholds chosen "
        "above); the tiny LM is random, so its own text is noise"
    )
    model = SafeLlava.from_pretrained(base_dir, safety_dir)
    test = read_records(corpus / "test.jsonl")
    picks = [next(r for r in test if r["safety"]["level"] == 0), next(r for r in test if r["safety"]["level"] > 0)]
    images = [decode_image(corpus / r["image"]) for r in picks]
    answers = Gate(model, policy).generate(images, [question_text(r) for r in picks], max_new_tokens=12)
    for record, answer in zip(picks, answers):
        d = answer.decision
        print(f"      {record['image']}  [truth: level {record['safety']['level']}, {record['safety']['type']}]")
        print(
            f"        head: level={d.level} ({d.level_probs[d.level]:.2f}) type={d.type} ({d.type_probs[d.type]:.2f})"
            f" -> {d.action} (rule {d.rule})"
        )
        print(f"        answer: {answer.text!r}")
    scan_dir = workdir / "scan"
    print(
        f"[6/6] risk scan of the whole corpus folder ({corpus / 'images'}) into {scan_dir}: "
        "vision tower + safety modules only, the language model is never loaded"
    )
    shutil.rmtree(scan_dir, ignore_errors=True)  # a rerun of the demo scans afresh instead of resuming
    settings = ScanSettings(
        base=str(base_dir), safety=str(safety_dir), policy=str(policy_file), batch_size=16, workers=0, part_size=64
    )
    manifest = run_scan(corpus / "images", scan_dir, settings, progress=False)
    counts = manifest["counts"]
    print(
        f"      {counts['items']} images, {counts['flagged']} flagged, {counts['errors']} errors; "
        f"{manifest['runs'][-1]['items_per_second']} images/s"
    )
    print(
        f"      report: {write_report(scan_dir, export_clean=scan_dir / 'clean_ids.txt')} "
        f"(thumbnails blurred); clean ids: {scan_dir / 'clean_ids.txt'}"
    )
    print(f"done in {time.time() - start:.0f} s")
    return 0
