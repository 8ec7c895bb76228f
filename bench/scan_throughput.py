"""Scan throughput, measured side by side on the same images in one run.

(a) the vision tower alone, (b) ``safevlm scan``'s path (reader, decode, preprocess, vision
tower, safety modules, parquet parts), (c) a generation-based judge on the same model (the
VLM asked for a safety category, generating 32 tokens, as LlavaGuard-style scanners do) and
(d) NudeNet if installed; plus the peak memory of (b).

Geometry: the vision tower is CLIP-L/14-336 (1024 hidden, 4096 MLP, 16 heads, 336 px /
patch 14 = 576 tokens), all 24 layers by default (``--vision-layers`` cuts it); the language
model has Vicuna-7B widths (4096 hidden, 11008 MLP, 32 heads, 32064 vocabulary), all 32 layers
on CUDA and 2 of them on a CPU by default (``--lm-layers``; cut, (c) is far cheaper than the
real judge and ``vs_generate`` is a lower bound); the safety modules have the reference widths
(C-Abstractor 1024->1088->4096, 2 x 64 tokens, 8-head head). Weights are random (nothing can be
downloaded here). ``--device`` (default: CUDA when available) and ``--dtype`` (default: bf16 on
CUDA, fp32 on CPU) choose where everything runs; the scan then uses ``--workers`` decode
workers (default: auto on CUDA, 0 on a CPU, where the workers would take the model's cores).

Peak memory of (b) is the growth of the process's peak RSS from just before the scan
loads its models (libraries already imported) to the end of the scan, divided by the bytes
of the weights it holds (vision tower + safety modules); model loading is included.

Usage: python bench/scan_throughput.py [--device cuda|cpu] [--dtype bf16|fp32] [--images N] [--batch-size B]
                                       [--threads 1] [--vision-layers 24] [--lm-layers 32|2] [--workers auto]
CPU defaults: 4 images, batch 2, 2 LM layers; CUDA defaults: 512 images, batch 64, 32 LM layers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GENERATE_TOKENS = 32
JUDGE_PROMPT = (
    "Is this image safe? Answer with one category: safe, politics, illegal risk, insults and bullying, "
    "fairness, privacy or misleading, then explain."
)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def build_checkpoint(folder: Path, vision_layers: int, lm_layers: int) -> None:
    """Write the benchmark's LLaVA (random weights, bf16 on disk) and matching safety modules."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from safety_modules import SafetyConfig, SafetyModules
    from safety_modules.modeling import base_fingerprint
    from safety_modules.testing.tiny import (
        LLAVA_7B_TEXT,
        LLAVA_7B_VISION,
        build_tokenizer,
        llava_config,
        llava_processor,
    )

    tokenizer = build_tokenizer()
    vision = {**LLAVA_7B_VISION, "num_hidden_layers": vision_layers}
    config = llava_config(tokenizer, vision, {**LLAVA_7B_TEXT, "num_hidden_layers": lm_layers})
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval().to(torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder / "base")
    llava_processor(tokenizer).save_pretrained(folder / "base")
    safety = SafetyModules(SafetyConfig.from_llava_config(config))
    safety.config.base_fingerprint = base_fingerprint(config, model.model.multi_modal_projector)
    safety.save_pretrained(folder / "safety")


def write_images(folder: Path, count: int) -> list:
    from PIL import Image
    from skimage import data

    names = [
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "cat",
        "hubble_deep_field",
        "immunohistochemistry",
        "colorwheel",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(count):
        image = Image.fromarray(getattr(data, names[i % len(names)])()).convert("RGB")
        image.save(folder / f"{i:03d}.png")
        images.append(image)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: CUDA when available)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32")
    parser.add_argument("--images", type=int, default=None, help="default: 512 on CUDA, 4 on CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CUDA, 2 on CPU")
    parser.add_argument("--workers", default=None, help="scan decode workers (default: auto on CUDA, 0 on CPU)")
    parser.add_argument("--vision-layers", type=int, default=24, help="CLIP-L layers (24 = uncut)")
    parser.add_argument(
        "--lm-layers", type=int, default=None, help="Vicuna-7B-width layers (default: 32 on CUDA, 2 on CPU)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of (a) and (b); best of each")
    args = parser.parse_args()

    import torch

    from safety_modules.modeling.llava import resolve_device, resolve_dtype

    args.device = resolve_device(args.device)
    args.dtype = resolve_dtype(args.dtype, args.device)
    cuda = args.device.type == "cuda"
    for name, on_cuda, on_cpu in (
        ("images", 512, 4),
        ("batch_size", 64, 2),
        ("lm_layers", 32, 2),
        ("workers", "auto", 0),
    ):
        if getattr(args, name) is None:
            setattr(args, name, on_cuda if cuda else on_cpu)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="scan-bench-"))
    try:
        measure(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(work: Path, args: argparse.Namespace) -> None:
    import torch

    load_at_start = os.getloadavg()[0]
    # Built in a child process so that building the full model does not raise this process's peak RSS.
    subprocess.run(
        [sys.executable, __file__, "--build", str(work), str(args.vision_layers), str(args.lm_layers)], check=True
    )
    images = write_images(work / "images", args.images)
    warmup = write_images(work / "warmup", args.batch_size)
    base, safety = work / "base", work / "safety"
    dtype_name = str(args.dtype).removeprefix("torch.")
    where = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    print(
        f"vision tower: CLIP-L/14-336 widths, {args.vision_layers} of 24 layers; language model: Vicuna-7B "
        f"widths, {args.lm_layers} of 32 layers; safety modules: reference widths; {dtype_name} on {where}, "
        f"{args.threads} torch thread(s), scan workers {args.workers}; {args.images} images, batch {args.batch_size}"
    )

    # (b) the scan path, first, so that the peak RSS it reaches is its own.
    import pyarrow.parquet  # noqa: F401  (libraries are imported before the baseline: they are not scan memory)
    import transformers.models.clip.modeling_clip  # noqa: F401
    import transformers.models.llava.modeling_llava  # noqa: F401
    from safetensors.torch import load_file

    from safety_modules.gate.pixels import PixelSpec, normalize
    from safety_modules.modeling.llava import load_vision_parts
    from safety_modules.scan import ScanSettings, run_scan
    from safety_modules.scan.batches import batch_jobs, prepare_batch
    from safety_modules.scan.engine import split_parts
    from safety_modules.scan.readers import CorpusReader

    rss_before = current_rss_bytes()
    settings = ScanSettings(
        base=str(base),
        safety=str(safety),
        batch_size=args.batch_size,
        workers=args.workers,
        dtype=dtype_name,
        device=str(args.device),
    )
    run_scan(work / "warmup", work / "out-warmup", settings, progress=False)  # same batch size as the timed runs
    peak_growth = peak_rss_bytes() - rss_before

    def scan_rate(round_: int) -> float:
        run = run_scan(work / "images", work / f"out-{round_}", settings, progress=False)["runs"][-1]
        return run["items_scanned"] / run["scan_seconds"]

    # (a) the whole vision tower alone, as LLaVA runs it, on the same images already preprocessed
    # (only the forward pass is timed; the scan's tower stops after the selected layer).
    parts = load_vision_parts(base, dtype=args.dtype, device=args.device)
    spec = PixelSpec.from_processor(parts.image_processor)
    jobs = batch_jobs(split_parts(CorpusReader(work / "images"), args.images), args.images)
    pixels = normalize(prepare_batch(next(jobs), spec, 50_000_000, True).pixels.to(args.device), spec, args.dtype)

    def vision_rate() -> float:
        started = time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(pixels), args.batch_size):
                # As transformers' LLaVA runs it: every layer, all hidden states kept.
                parts.vision_tower(pixels[start : start + args.batch_size], output_hidden_states=True)
        if args.device.type == "cuda":
            torch.cuda.synchronize(args.device)
        return len(pixels) / (time.perf_counter() - started)

    # Other jobs share this machine: (a) and (b) alternate and each keeps its best round.
    rates = [(vision_rate(), scan_rate(round_)) for round_ in range(args.rounds)]
    vision = max(r[0] for r in rates)
    scan = max(r[1] for r in rates)
    # The scan holds the whole tower (it runs it up to the layer LLaVA reads) and the safety modules.
    weight_bytes = sum(p.numel() * p.element_size() for p in parts.vision_tower.parameters())
    weight_bytes += sum(t.numel() * t.element_size() for t in load_file(str(safety / "model.safetensors")).values())
    parts = None  # free the tower before the full model loads (vision_rate is not called again)

    # (c) a generation-based judge on the same model: prompt + image in, 32 tokens out.
    from safety_modules.modeling.llava import load_base

    model, processor = load_base(base, dtype=args.dtype, device=args.device)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": JUDGE_PROMPT}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)

    def judge(batch) -> None:
        inputs = processor(images=batch, text=[prompt] * len(batch), return_tensors="pt", padding=True)
        inputs = {k: v.to(args.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(args.dtype)
        model.generate(**inputs, max_new_tokens=GENERATE_TOKENS, min_new_tokens=GENERATE_TOKENS, do_sample=False)

    with torch.no_grad():
        judge(warmup[:1])
        started = time.perf_counter()
        for start in range(0, len(images), args.batch_size):
            judge(images[start : start + args.batch_size])
        generate_rate = len(images) / (time.perf_counter() - started)
    model = None  # free it (judge is not called again)

    # (d) NudeNet (PyPI nudenet, its bundled ONNX detector), if installed.
    try:
        from nudenet import NudeDetector
    except ImportError:
        nudenet_rate = None
    else:
        detector = NudeDetector()
        files = sorted(str(p) for p in (work / "images").glob("*.png"))
        detector.detect(files[0])
        started = time.perf_counter()
        for file in files:
            detector.detect(file)
        nudenet_rate = len(files) / (time.perf_counter() - started)

    print(f"(a) vision tower alone:        {vision:8.3f} images/s")
    print(f"(b) scan path:                 {scan:8.3f} images/s")
    print(f"(c) generation judge (32 tok): {generate_rate:8.3f} images/s")
    print("(d) NudeNet detector:          " + (f"{nudenet_rate:8.3f} images/s" if nudenet_rate else "not installed"))
    print(
        f"peak memory of (b): {peak_growth / 2**20:.0f} MiB over {weight_bytes / 2**20:.0f} MiB of vision + safety "
        f"weights"
    )
    print(
        json.dumps(
            {
                "vision": vision,
                "scan": scan,
                "generate": generate_rate,
                "nudenet": nudenet_rate,
                "peak_bytes": peak_growth,
                "weight_bytes": weight_bytes,
            }
        )
    )
    print(
        f"1-min load average: {load_at_start:.1f} at start, {os.getloadavg()[0]:.1f} at end "
        "(other processes on these cores add noise)"
    )
    print(
        f"scan_throughput vs_vision={scan / vision:.3f} vs_generate={scan / generate_rate:.1f} "
        f"peak_mem_ratio={peak_growth / weight_bytes:.2f}"
    )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--build":
        build_checkpoint(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
