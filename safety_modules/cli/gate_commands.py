"""Gate commands: ``generate`` answers one image + prompt behind the safety policy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .model_flags import add_allow_unverified_base, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer a prompt about an image, gated by the safety policy")
    p.add_argument("--base", required=True, help="LLaVA-1.5 folder or hub id (HF or original layout)")
    p.add_argument("--safety", help="safety-modules folder or hub id (default: fresh, untrained modules)")
    p.add_argument("--lora", help="stage-2 LoRA adapter folder for the language model")
    add_allow_unverified_base(p)
    p.add_argument("--image", required=True, type=Path, help="the image file")
    p.add_argument("--prompt", required=True, help="the question about the image")
    p.add_argument(
        "--policy",
        help="default (the default), argmax, allow-all (alias none: the gate never acts) or a policy YAML laid over "
        "the default",
    )
    p.add_argument(
        "--refusal",
        choices=["short_circuit", "generate"],
        default="short_circuit",
        help="refused requests: canned refusal without the LLM, or generate with the top-level hint",
    )
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens")
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    p.add_argument("--json", action="store_true", help="print one JSON object with the answer and the decision")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from ..gate import Gate
    from ..images import decode_image
    from ..policy import SafetyPolicy

    image = decode_image(args.image)
    model = load_model(args)
    policy = SafetyPolicy.load(args.policy, model.config.taxonomy)
    streamer = None
    if args.stream and not args.json:
        from transformers import TextStreamer

        streamer = TextStreamer(model.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    gate = Gate(model, policy, refusal=args.refusal)
    answer = gate.generate(
        [image], [args.prompt], streamer=streamer, do_sample=False, max_new_tokens=args.max_new_tokens
    )[0]
    if args.json:
        print(json.dumps(answer.to_dict()))
        return 0
    if streamer is None:
        print(answer.text)
    d = answer.decision
    # The decision goes to stderr so stdout holds only the answer.
    print(f"[gate] policy={d.policy} action={d.action} rule={d.rule} level={d.level} type={d.type}", file=sys.stderr)
    return 0
