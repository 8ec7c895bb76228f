"""Foundation commands: ``make-tiny``, ``assess`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .model_flags import add_allow_unverified_base, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-tiny", help="write a tiny random LLaVA-1.5 folder (real CLIP geometry, no download)")
    p.add_argument("out_dir", type=Path, help="folder to write the tiny model into")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("assess", help="print the safety head's level/type probabilities for images")
    p.add_argument("images", nargs="+", type=Path, help="image files")
    p.add_argument("--base", required=True, help="LLaVA-1.5 folder or hub id (HF or original layout)")
    p.add_argument(
        "--safety",
        help="safety-modules folder or hub id (default: fresh, UNTRAINED modules: random scores, with a warning)",
    )
    add_allow_unverified_base(p)
    p.add_argument("--prompt", help="the user prompt the head should also see")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=cmd_assess)

    p = sub.add_parser("demo", help="the main job on the built-in tiny model")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"), help="where everything is written")
    p.add_argument("--rl", action="store_true", help="run the RL alignment stage demo (GRPO on the tiny model) instead")
    p.set_defaults(func=cmd_demo)


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from ..testing.tiny import make_tiny

    out = make_tiny(args.out_dir, seed=args.seed)
    print(f"tiny LLaVA-1.5 written to {out}")
    return 0


def untrained_warning(safety: str | None, training: dict | None) -> str | None:
    """Why the scores mean nothing, when they do not: no modules given, or modules no training run saved."""
    if safety is None:
        return (
            "no --safety given: these are fresh, UNTRAINED safety modules with random weights; their scores mean "
            "nothing and change on every run (train them with `safevlm train stage1`, or pass --safety)"
        )
    if training is None:
        return (
            f"the safety modules in {safety} record no training run (saved untrained, or by a version that did not "
            "record it): their scores may mean nothing"
        )
    return None


def format_scores(name: str, level_probs, type_probs, config) -> str:
    """One readable line per image: top level and top type with their probabilities."""
    level = int(level_probs.argmax())
    type_ = int(type_probs.argmax())
    return (
        f"{name}: level={config.level_names[level]} ({float(level_probs[level]):.2f}) "
        f"type={config.type_names[type_]} ({float(type_probs[type_]):.2f})"
    )


def cmd_assess(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..gate.limits import check_prompt_tokens, context_length
    from ..images import ImageDecodeError, decode_image

    images = []
    for path in args.images:  # decoded first, as `scan` and `generate` decode (pixel cap included)
        try:
            images.append(decode_image(path))
        except ImageDecodeError as exc:
            raise InputError(f"{path}: {exc}") from None
    model = load_model(args)
    warning = untrained_warning(args.safety, model.config.training)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    placeholder = model.processor.image_token if model.processor is not None else None
    if args.prompt and placeholder and placeholder in args.prompt:
        raise InputError(f"--prompt contains the image placeholder {placeholder!r}; the image is passed separately")
    if args.prompt:  # the head reads the prompt: refuse one longer than the model's context
        check_prompt_tokens(model.processor.tokenizer, [args.prompt], context_length(model.base.config))
    prompts = [args.prompt] * len(images) if args.prompt else None
    scores = model.assess(images, prompts)
    cfg = model.config
    for path, lp, tp in zip(args.images, scores.level_probs, scores.type_probs):
        if args.json:
            # JSON has no NaN: a non-finite probability is null, and the record says why.
            levels, types = dict(zip(cfg.level_names, map(float, lp))), dict(zip(cfg.type_names, map(float, tp)))
            record: dict = {"image": str(path)}
            for key, probs in (("levels", levels), ("types", types)):
                record[key] = {k: (v if math.isfinite(v) else None) for k, v in probs.items()}
            if None in [*record["levels"].values(), *record["types"].values()]:
                record["error"] = "non_finite: the safety modules gave NaN or inf probabilities"
            print(json.dumps(record, allow_nan=False))
        else:
            print(format_scores(str(path), lp, tp, cfg))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.rl:
        from ..testing.rl_demo import run_rl_demo

        return run_rl_demo(args.workdir / "rl")
    from ..testing.demo import run_demo

    return run_demo(args.workdir)
