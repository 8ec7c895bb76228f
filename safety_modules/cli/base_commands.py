"""Foundation commands: ``make-tiny``, ``assess`` and ``demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-tiny", help="write a tiny random LLaVA-1.5 folder (real CLIP geometry, no download)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("assess", help="print the safety head's level/type probabilities for images")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--base", required=True, help="LLaVA-1.5 folder or hub id (HF or original layout)")
    p.add_argument("--safety", help="safety-modules folder or hub id (default: fresh, untrained modules)")
    p.add_argument("--prompt", help="the user prompt the head should also see")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=cmd_assess)

    p = sub.add_parser("demo", help="the main job on the built-in tiny model")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    p.add_argument("--rl", action="store_true", help="run the RL alignment stage demo (GRPO on the tiny model) instead")
    p.set_defaults(func=cmd_demo)


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from ..testing.tiny import make_tiny

    out = make_tiny(args.out_dir, seed=args.seed)
    print(f"tiny LLaVA-1.5 written to {out}")
    return 0


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
    from ..images import ImageDecodeError, decode_image
    from ..modeling.safe_llava import SafeLlava

    images = []
    for path in args.images:  # decoded first, as `scan` and `generate` decode (pixel cap included)
        try:
            images.append(decode_image(path))
        except ImageDecodeError as exc:
            raise InputError(f"{path}: {exc}") from None
    model = SafeLlava.from_pretrained(args.base, args.safety, dtype=args.dtype, device=args.device)
    placeholder = model.processor.image_token if model.processor is not None else None
    if args.prompt and placeholder and placeholder in args.prompt:
        raise InputError(f"--prompt contains the image placeholder {placeholder!r}; the image is passed separately")
    prompts = [args.prompt] * len(images) if args.prompt else None
    scores = model.assess(images, prompts)
    cfg = model.config
    for path, lp, tp in zip(args.images, scores.level_probs, scores.type_probs):
        if args.json:
            print(
                json.dumps(
                    {
                        "image": str(path),
                        "levels": dict(zip(cfg.level_names, map(float, lp))),
                        "types": dict(zip(cfg.type_names, map(float, tp))),
                    }
                )
            )
        else:
            print(format_scores(str(path), lp, tp, cfg))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.rl:
        from ..testing.rl_demo import run_rl_demo

        return run_rl_demo(args.workdir / "rl")
    from ..testing.demo import run_demo

    return run_demo(args.workdir)
