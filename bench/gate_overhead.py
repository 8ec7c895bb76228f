"""Gate overhead: plain base generate vs gated generate (allow) vs a refused request.

The model has the LLaVA-1.5-7B geometry with random weights: CLIP ViT-L/14-336
(width 1024, 576 image tokens), a Llama with width 4096, MLP 11008, 32 heads and a
32064-token vocabulary, and full-size safety modules (C-Abstractor 1024->1088->4096,
2 x 64 safety tokens, 8-head safety head). On CUDA (the default device when there is one)
it runs at full depth (24 vision / 32 text layers) in bfloat16; on the CPU the depths are cut
by default (``--vision-layers 3 --text-layers 4``) so it runs on 2 cores, and since the safety
modules are not cut the measured overhead is then larger than it would be at full depth.
The tokenizer is the project's tiny one (real 7B token ids are not needed for timing).

Measured in one run, alternating (the order rotates every round), greedy, with a
fixed number of new tokens (EOS is suppressed until then), on one fixed image and prompt,
each timing ending with a device synchronisation:

  (a) ``base.generate(**processor(image, prompt))``: the plain LLaVA
  (b) ``Gate.generate`` with the default policy, decision allow (safety tokens injected)
  (c) ``Gate.generate`` refused by the policy (refusal short-circuit, no language model)
  (d) as (b) with ``inject_safety_tokens=False``: the gate's own cost without the method's 64
      safety tokens B in the language model's input (they lengthen the prefill by ~10%)

Prints, for each ``--new-tokens`` value, a table of absolute seconds (median, min, max) beside
the ratio to (a), and as its last lines
``gate_overhead new_tokens=<n> allow=<b/a> refuse=<c/a> base_s=<a> allow_s=<b> refuse_s=<c>``.

    python bench/gate_overhead.py                      # CPU: cut depth, 16 new tokens, 4 rounds
    python bench/gate_overhead.py --device cuda        # full 7B depth, bf16, 32 and 128 new tokens
    python bench/gate_overhead.py --tiny --new-tokens 2 --rounds 1   # the tiny model: checks the script only
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def build(vision_layers: int, text_layers: int, seed: int, device: torch.device, dtype: torch.dtype):
    """The 7B-geometry SafeLlava, initialised directly on ``device`` in ``dtype``."""
    from transformers import LlavaForConditionalGeneration

    from safety_modules import SafeLlava, SafetyConfig, SafetyModules
    from safety_modules.testing.tiny import (
        LLAVA_7B_TEXT,
        LLAVA_7B_VISION,
        build_tokenizer,
        llava_config,
        llava_processor,
    )

    tokenizer = build_tokenizer()
    processor = llava_processor(tokenizer)
    vision = {**LLAVA_7B_VISION, "num_hidden_layers": vision_layers}
    config = llava_config(tokenizer, vision, {**LLAVA_7B_TEXT, "num_hidden_layers": text_layers})
    torch.manual_seed(seed)
    with torch.device(device):  # no full-size float32 copy on the CPU first
        base = LlavaForConditionalGeneration._from_config(config, dtype=dtype).eval()
    base.generation_config.pad_token_id = tokenizer.pad_token_id
    safety = SafetyModules(SafetyConfig.from_llava_config(base.config))
    return SafeLlava(base, safety, processor)


def build_tiny(seed: int, device: torch.device, dtype: torch.dtype, folder: str):
    """The project's tiny LLaVA (written to ``folder``) with seeded modules: runs the script in seconds."""
    from safety_modules import SafeLlava
    from safety_modules.testing.tiny import make_tiny

    return SafeLlava.from_pretrained(make_tiny(folder, seed=seed), seed=seed, device=device, dtype=dtype)


def main() -> None:
    from safety_modules.modeling.llava import resolve_device, resolve_dtype

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda when available, else cpu ($SAFEVLM_DEVICE is honoured)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32")
    parser.add_argument("--vision-layers", type=int, default=None, help="CLIP depth (default: 24 on CUDA, 3 on CPU)")
    parser.add_argument("--text-layers", type=int, default=None, help="Llama depth (default: 32 on CUDA, 4 on CPU)")
    parser.add_argument(
        "--new-tokens",
        type=int,
        nargs="+",
        default=None,
        help="new tokens per request, one table each (default: 32 128 on CUDA, 16 on CPU)",
    )
    parser.add_argument("--rounds", type=int, default=4, help="measurements per case, after a short warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny test model instead of the 7B geometry (the GPU suite's dry run)"
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    cuda = device.type == "cuda"
    vision_layers = args.vision_layers or (24 if cuda else 3)
    text_layers = args.text_layers or (32 if cuda else 4)
    new_tokens = args.new_tokens or ([32, 128] if cuda else [16])

    from PIL import Image
    from skimage import data

    from safety_modules import Gate, SafetyPolicy
    from safety_modules.modeling.llava.conversation import chat_text

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    if args.tiny:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gate-overhead-tiny-") as folder:
            model = build_tiny(args.seed, device, dtype, folder)
    else:
        model = build(vision_layers, text_layers, args.seed, device, dtype)
    image = Image.fromarray(data.astronaut())
    question = "What is shown in this image? Describe it in detail."
    allow = Gate(model, SafetyPolicy.default())
    allow_no_tokens = Gate(model, SafetyPolicy.default(), inject_safety_tokens=False)
    refuse = Gate(model, SafetyPolicy.from_dict({"name": "refuse_all", "defaults": {"hint": None, "refuse": 0.0}}))
    plain_text = chat_text(model.processor, question)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def greedy(n: int) -> dict:
        return {"do_sample": False, "max_new_tokens": n, "min_new_tokens": n}

    @torch.no_grad()
    def plain(n: int) -> None:
        enc = model.processor(images=[image], text=[plain_text], return_tensors="pt").to(device)
        enc["pixel_values"] = enc["pixel_values"].to(dtype)
        out = model.base.generate(**enc, **greedy(n))
        assert out.shape[1] - enc["input_ids"].shape[1] == n

    stages: dict[int, list[dict[str, float]]] = {n: [] for n in new_tokens}  # the gate's timings of (b)

    def gated_allow(n: int) -> None:
        answer = allow.generate(image, question, **greedy(n))[0]
        assert answer.decision.action == "allow" and len(answer.token_ids) == n, answer.decision
        if n in stages:
            stages[n].append(answer.decision.timings)

    def gated_allow_no_tokens(n: int) -> None:
        answer = allow_no_tokens.generate(image, question, **greedy(n))[0]
        assert answer.decision.action == "allow" and len(answer.token_ids) == n, answer.decision

    def refused(n: int) -> None:
        answer = refuse.generate(image, question, **greedy(n))[0]
        assert answer.decision.action == "refuse" and answer.token_ids is None

    cases = {
        "(a) base generate": plain,
        "(b) gated, allow": gated_allow,
        "(c) gated, refused": refused,
        "(d) allow, no tokens B": gated_allow_no_tokens,
    }
    names = list(cases)
    for name in names:  # warm-up (kernels, allocations), short to save time
        cases[name](2)
    for stage in stages.values():
        stage.clear()
    times: dict[int, dict[str, list[float]]] = {n: {name: [] for name in cases} for n in new_tokens}
    for n in new_tokens:
        for round_ in range(args.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                sync()
                t0 = time.perf_counter()
                cases[name](n)
                sync()
                times[n][name].append(time.perf_counter() - t0)

    where = torch.cuda.get_device_name(device) if cuda else f"CPU, torch threads {torch.get_num_threads()}"
    geometry = (
        "the tiny test model (NOT the 7B geometry: these ratios mean nothing)"
        if args.tiny
        else f"LLaVA-1.5-7B geometry, random weights; depths: vision {vision_layers}/24 layers, text "
        f"{text_layers}/32 layers; safety modules full size"
    )
    print(
        f"{geometry}; {dtype} on {device} ({where}); greedy; "
        f"{args.rounds} alternating rounds; total {time.perf_counter() - started:.0f} s; 1-min load average "
        f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end (other processes on these cores add noise)"
    )
    summary = []
    for n in new_tokens:
        medians = {name: statistics.median(values) for name, values in times[n].items()}
        base_median = medians[names[0]]
        print(f"\n{n} new tokens")
        print(f"{'case':<22} {'median s':>9} {'min s':>8} {'max s':>8} {'vs (a)':>7}")
        for name in names:
            values = times[n][name]
            print(
                f"{name:<22} {medians[name]:9.4f} {min(values):8.4f} {max(values):8.4f} "
                f"{medians[name] / base_median:7.3f}"
            )
        parts = ", ".join(
            f"{key} {statistics.median(t[key] for t in stages[n]):.4f}"
            for key in ("vision_s", "scoring_s", "generation_s")
        )
        print(f"(b) split by the gate's own timings (medians, s): {parts}")
        b, c, d = (medians[names[i]] for i in (1, 2, 3))
        print(f"(d)/(a) = {d / base_median:.3f}: the gate alone; (b)/(d) = {b / d:.3f}: the 64 safety tokens B")
        summary.append(
            f"gate_overhead new_tokens={n} allow={b / base_median:.3f} refuse={c / base_median:.3f} "
            f"base_s={base_median:.4f} allow_s={b:.4f} refuse_s={c:.4f}"
        )
    print()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
