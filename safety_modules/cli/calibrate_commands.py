"""``safevlm calibrate``: temperature scaling and thresholds chosen from validation data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from .model_flags import add_allow_unverified_base, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit temperatures on validation data, choose policy thresholds for a target")
    p.add_argument("--base", required=True, help="LLaVA-1.5 folder or hub id (HF or original layout)")
    p.add_argument("--safety", required=True, help="safety-modules folder or hub id (never modified)")
    add_allow_unverified_base(p)
    p.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="validation items: training-format JSON/JSONL, UnsafeConcepts folder, or a folder of safe "
        "images (several OK)",
    )
    p.add_argument(
        "--test", type=Path, nargs="+", help="held-out test items (same forms): figures reported, never used to fit"
    )
    p.add_argument("--lora", help="stage-2 LoRA adapter folder (loaded as for serving; the head does not read it)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder: calibrated modules, policy.yaml, calibration.md/.json, PNGs",
    )
    p.add_argument(
        "--target",
        default="recall=0.95",
        help="recall=R: act (hint or refuse) on >= R of the risky items and refuse >= R of the top-level "
        "ones (default recall=0.95)",
    )
    p.add_argument(
        "--max-over-refusal",
        type=float,
        metavar="B",
        help="instead of the refuse recall: refuse at most B of the safe items (hints still follow --target)",
    )
    p.add_argument(
        "--warn-over-refusal",
        type=_share,
        metavar="B",
        help="warn when the chosen thresholds refuse more than B of the safe items "
        "(default: calibration.OVER_REFUSAL_WARN, 0.1)",
    )
    p.add_argument("--per-type", action="store_true", help="one hint/refuse pair per risk type (default: shared)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    p.add_argument("--batch-size", type=_positive, default=16, help="images per forward pass")
    p.set_defaults(func=cmd_calibrate)


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse turns the ValueError into a usage error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _share(text: str) -> float:
    """An argparse type: a share in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..calibration import OVER_REFUSAL_WARN, Target, check_classes, parse_target
    from ..calibration_report import run_calibration, summary_lines
    from ..evaluation.head import load_labelled

    if args.max_over_refusal is not None and not 0.0 <= args.max_over_refusal < 1.0:
        raise ConfigError(f"--max-over-refusal must be in [0, 1), got {args.max_over_refusal}")
    target = Target(recall=parse_target(args.target), max_over_refusal=args.max_over_refusal)
    val_items = [item for path in args.data for item in load_labelled(path)]
    test_items = [item for path in args.test for item in load_labelled(path)] if args.test else None
    check_classes([item.level for item in val_items])  # before the model loads (minutes for a 7B base)
    model = load_model(args)
    result = run_calibration(
        model,
        args.safety,
        val_items,
        args.out,
        target=target,
        per_type=args.per_type,
        test_items=test_items,
        batch_size=args.batch_size,
        warn_over_refusal=OVER_REFUSAL_WARN if args.warn_over_refusal is None else args.warn_over_refusal,
    )
    for line in summary_lines(result):
        print(line)
    for warning in result.warnings:  # also on stderr, where a script's log keeps it
        print(f"safevlm calibrate: WARNING: {warning}", file=sys.stderr)
    print(f"calibrated modules: {args.out}; policy: {result.policy_file}; report: {args.out / 'calibration.md'}")
    return 0
