"""Gate overhead: plain base generate vs gated generate (allow) vs a refused request.

The model has the LLaVA-1.5-7B geometry with random weights: CLIP ViT-L/14-336
(width 1024, 576 image tokens), a Llama with width 4096, MLP 11008, 32 heads and a
32064-token vocabulary, and full-size safety modules (C-Abstractor 1024->1088->4096,
2 x 64 safety tokens, 8-head safety head). Only the depths are cut (``--vision-layers``,
``--text-layers``) so it runs on 2 CPU cores; the safety modules are not cut, so the
measured overhead is larger than it would be at full depth. The tokenizer is the
project's tiny one (real 7B token ids are not needed for timing).

Measured in one run, alternating (the order rotates every round), greedy, with a
fixed number of new tokens (EOS is suppressed until then), on one fixed image and prompt:

  (a) ``base.generate(**processor(image, prompt))``: the plain LLaVA
  (b) ``SafeLlava.generate`` with the default policy, decision allow (safety tokens injected)
  (c) ``SafeLlava.generate`` refused by the policy (refusal short-circuit, no language model)
  (d) as (b) with ``inject_safety_tokens=False``: the gate's own cost without the method's 64
      safety tokens B in the language model's input (they lengthen the prefill by ~10%)

Prints a table of medians and, as its last line, ``gate_overhead allow=<b/a> refuse=<c/a>``.

    python bench/gate_overhead.py   # defaults: --vision-layers 3 --text-layers 4 --new-tokens 16 --rounds 4
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def build(vision_layers: int, text_layers: int, seed: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from safety_modules import SafeLlava, SafetyConfig, SafetyModules
    from safety_modules.backbone import LLAVA_CHAT_TEMPLATE
    from safety_modules.tiny import build_tokenizer, tiny_image_processor

    tokenizer = build_tokenizer()
    processor = LlavaProcessor(image_processor=tiny_image_processor(), tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                              num_hidden_layers=vision_layers, image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                       num_hidden_layers=text_layers, vocab_size=32064, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         image_seq_length=576, vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    base = LlavaForConditionalGeneration(config).eval()
    base.generation_config.pad_token_id = tokenizer.pad_token_id
    safety = SafetyModules(SafetyConfig.from_llava_config(base.config))
    return SafeLlava(base, safety, processor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision-layers", type=int, default=3, help="CLIP depth (24 in LLaVA-1.5-7B)")
    parser.add_argument("--text-layers", type=int, default=4, help="Llama depth (32 in LLaVA-1.5-7B)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="measurements per case, after a short warm-up")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from PIL import Image
    from skimage import data

    from safety_modules import SafetyPolicy
    from safety_modules.generation import chat_text

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    model = build(args.vision_layers, args.text_layers, args.seed)
    image = Image.fromarray(data.astronaut())
    question = "What is shown in this image? Describe it in detail."
    allow_policy = SafetyPolicy.default()
    refuse_policy = SafetyPolicy.from_dict({"name": "refuse_all", "defaults": {"hint": None, "refuse": 0.0}})
    plain_text = chat_text(model.processor, question)

    def greedy(n: int) -> dict:
        return dict(do_sample=False, max_new_tokens=n, min_new_tokens=n)

    @torch.no_grad()
    def plain(n: int) -> None:
        enc = model.processor(images=[image], text=[plain_text], return_tensors="pt")
        out = model.base.generate(**enc, **greedy(n))
        assert out.shape[1] - enc["input_ids"].shape[1] == n

    stages: list[dict[str, float]] = []  # the gate's own timings of each measured (b) call

    def gated_allow(n: int) -> None:
        answer = model.generate(image, question, allow_policy, **greedy(n))[0]
        assert answer.decision.action == "allow" and len(answer.token_ids) == n, answer.decision
        if n == args.new_tokens:
            stages.append(answer.decision.timings)

    def gated_allow_no_tokens(n: int) -> None:
        answer = model.generate(image, question, allow_policy, inject_safety_tokens=False, **greedy(n))[0]
        assert answer.decision.action == "allow" and len(answer.token_ids) == n, answer.decision

    def refused(n: int) -> None:
        answer = model.generate(image, question, refuse_policy, **greedy(n))[0]
        assert answer.decision.action == "refuse" and answer.token_ids is None

    cases = {"(a) base generate": plain, "(b) gated, allow": gated_allow, "(c) gated, refused": refused,
             "(d) allow, no tokens B": gated_allow_no_tokens}
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for name in names:  # warm-up (kernels, allocations), short to save time
        cases[name](2)
    for round_ in range(args.rounds):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            t0 = time.perf_counter()
            cases[name](args.new_tokens)
            times[name].append(time.perf_counter() - t0)

    print(f"LLaVA-1.5-7B geometry, random weights, depths cut: vision {args.vision_layers}/24 layers, "
          f"text {args.text_layers}/32 layers; safety modules full size; {args.new_tokens} new tokens, greedy; "
          f"{args.rounds} alternating rounds; torch threads {torch.get_num_threads()}; "
          f"total {time.perf_counter() - started:.0f} s; 1-min load average {load_before:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end (other processes on these cores add noise)")
    base_median = statistics.median(times[names[0]])
    print(f"{'case':<22} {'median s':>9} {'min s':>8} {'max s':>8} {'vs (a)':>7}")
    for name in names:
        values = times[name]
        median = statistics.median(values)
        print(f"{name:<22} {median:9.3f} {min(values):8.3f} {max(values):8.3f} {median / base_median:7.3f}")
    parts = ", ".join(f"{key} {statistics.median(t[key] for t in stages):.3f}"
                      for key in ("vision_s", "scoring_s", "generation_s"))
    print(f"(b) split by the gate's own timings (medians): {parts}")
    allow = statistics.median(times[names[1]]) / base_median
    refuse = statistics.median(times[names[2]]) / base_median
    no_tokens = statistics.median(times[names[3]]) / base_median
    print(f"(d)/(a) = {no_tokens:.3f}: the gate alone; (b)/(d) = {allow / no_tokens:.3f}: the 64 safety tokens B")
    print(f"gate_overhead allow={allow:.3f} refuse={refuse:.3f}")


if __name__ == "__main__":
    main()
