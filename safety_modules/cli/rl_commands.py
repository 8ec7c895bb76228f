"""``safevlm train rl CONFIG.yaml``: the RL alignment stage (PPO or GRPO) and its before/after report."""

from __future__ import annotations

import argparse
from pathlib import Path

from .recipe_overrides import add_recipe_arguments


def add_rl_parser(stages: argparse._SubParsersAction) -> None:
    """Register ``train rl`` under the ``train`` sub-commands."""
    p = stages.add_parser(
        "rl", help="RL alignment (PPO as published, or GRPO) from a YAML recipe (see train/)", add_help=False
    )
    add_recipe_arguments(p, "RL steps", "algorithm=grpo", "safety_modules.training.rl.config:RLConfig")
    p.add_argument("--no-report", action="store_true", help="skip the before/after report on eval_data")
    p.set_defaults(func=cmd_train_rl)


def cmd_train_rl(args: argparse.Namespace) -> int:
    from ..training.rl.config import RLConfig
    from ..training.rl.report import before_after_report
    from ..training.rl.trainer import train_rl
    from .recipe_overrides import recipe_overrides

    cfg = RLConfig.from_yaml(args.config, **recipe_overrides(args))
    result = train_rl(cfg)
    if result.adapter_dir is None:
        return 0
    print(f"saved {result.adapter_dir} (load it with --lora)")
    if cfg.eval_data and not args.no_report:
        report = before_after_report(cfg, result.adapter_dir, Path(cfg.output_dir) / "report")
        print(f"report: {report}")
    return 0
