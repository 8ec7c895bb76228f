"""Data and training commands: ``data convert``, ``data synth``, ``data balance``, ``train stage1|stage2|rl``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .recipe_overrides import add_recipe_arguments


def register(sub: argparse._SubParsersAction) -> None:
    from ..data.convert import CONVERTERS

    data = sub.add_parser("data", help="build training data").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("convert", help="convert a published dataset layout to training records")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for converter in CONVERTERS.values():
        k = kinds.add_parser(converter.name, help=converter.help)
        converter.add_arguments(k)
        k.add_argument("--out", type=Path, required=True, help="output .json or .jsonl")
        k.add_argument("--seed", type=int, default=0, help="seed of the shuffles and the drawn questions")
        k.add_argument("--balance", type=int, metavar="N", help="keep every risky record and N clean ones")
        k.set_defaults(func=cmd_convert, converter=converter)

    p = data.add_parser("synth", help="generate the synthetic risk corpus (train/val/test)")
    p.add_argument("out_dir", type=Path, help="folder for the images and train/val/test.jsonl")
    p.add_argument("--size", type=int, default=300, help="number of images (default 300)")
    p.add_argument("--resolution", type=int, default=336, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    p.set_defaults(func=cmd_synth)

    train = sub.add_parser("train", help="train the safety modules (stage 1), LoRA (stage 2) or RL alignment (rl)")
    stages = train.add_subparsers(dest="stage", required=True)
    for stage in ("stage1", "stage2"):
        p = stages.add_parser(stage, help=f"{stage} from a YAML recipe (see train/)", add_help=False)
        add_recipe_arguments(
            p, "optimizer steps", "gradient_accumulation_steps=64", "safety_modules.training.config:TrainConfig"
        )
        p.set_defaults(func=cmd_train)
    from .rl_commands import add_rl_parser

    add_rl_parser(stages)


def cmd_convert(args: argparse.Namespace) -> int:
    from ..data.balance import balance
    from ..data.format import write_records

    result = args.converter.run(args)
    records = result.records
    if args.balance is not None:
        records = balance(records, args.balance, args.seed)
    write_records(records, args.out)
    for path, reason in result.skipped:
        print(f"skipped {path}: {reason}")
    print(f"{args.kind}: wrote {len(records)} records to {args.out} ({len(result.skipped)} skipped)")
    if not records:  # an empty training file is never what was wanted: say so and fail
        print(f"safevlm data convert {args.kind}: error: no record was written; check the input and its options")
        return 1
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from ..testing.synth import synthesize

    manifest = synthesize(args.out_dir, args.size, args.seed, args.resolution, progress=print)
    print(f"wrote {manifest['total']} images to {args.out_dir}: splits {manifest['splits']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..training import TrainConfig, train
    from .recipe_overrides import recipe_overrides

    cfg = TrainConfig.from_yaml(args.config, **recipe_overrides(args))
    expected = 1 if args.stage == "stage1" else 2
    if cfg.stage != expected:
        raise ConfigError(f"{args.config} is a stage {cfg.stage} recipe; run it with `safevlm train stage{cfg.stage}`")
    result = train(cfg)
    for path in (result.safety_dir, result.adapter_dir):
        if path:
            print(f"saved {path}")
    return 0
