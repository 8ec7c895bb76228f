"""`safevlm calibrate` as a job: score labelled validation (and test) items, fit temperatures, choose
thresholds, and write the calibrated modules, ``policy.yaml``, ``calibration.md``/``.json`` and PNGs.

The input modules' folder is never written to: the output folder gets a copy of their weights
file, a config with the temperatures and a fresh model card (see `safety_modules.calibration` for the maths).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .calibration import (
    OVER_REFUSAL_WARN,
    Target,
    TemperatureFit,
    ThresholdChoice,
    check_classes,
    choose_thresholds,
    fit_head_temperature,
    over_refusal_warnings,
    policy_metrics,
    unmet_targets,
)
from .checkpoints.card import write_card
from .errors import CalibrationError, InputError
from .evaluation.head import LabelledImage, collect_scores
from .evaluation.report import fmt, markdown_table, write_markdown
from .metrics import ece_noise_floor, expected_calibration_error, negative_log_likelihood, reliability_bins
from .modeling import SafetyScores
from .modeling.configuration import SafetyConfig
from .modeling.safety_modules import CONFIG_NAME, WEIGHTS_NAME, checkpoint_files
from .policy import SafetyPolicy

POLICY_NAME = "policy.yaml"
HEADS = ("level", "type")


@dataclass
class LabelledScores:
    """The head's scores for labelled items, with their gold level and type ids."""

    scores: SafetyScores
    levels: np.ndarray
    types: np.ndarray

    def probs(self, head: str) -> np.ndarray:
        """The head's probabilities (read with the scores' temperatures)."""
        return (self.scores.level_probs if head == "level" else self.scores.type_probs).numpy()

    def gold(self, head: str) -> np.ndarray:
        return self.levels if head == "level" else self.types


@dataclass
class CalibrationResult:
    """Everything `run_calibration` decided and measured (``splits``: validation, and test when given)."""

    out_dir: Path
    temperatures: dict[str, TemperatureFit]
    choice: ThresholdChoice
    target: Target
    per_type: bool
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # over-refusal above the bound, per split

    @property
    def policy_file(self) -> Path:
        return self.out_dir / POLICY_NAME

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": dataclasses.asdict(self.target),
            "per_type": self.per_type,
            "temperatures": {h: fit.to_dict() for h, fit in self.temperatures.items()},
            "thresholds": {
                "hint": _finite(self.choice.hint),
                "refuse": _finite(self.choice.refuse),
                "notes": self.choice.notes,
            },
            "splits": self.splits,
            "warnings": self.warnings,
        }


def score_labelled(model, items: Sequence[LabelledImage], batch_size: int = 16) -> LabelledScores:
    """The head's scores (raw logits + the model's temperatures) for every decodable labelled item."""
    cfg = model.config
    unknown = sorted({it.type for it in items} - set(cfg.type_names))
    if unknown:
        raise InputError(f"label types {unknown} are not in the head's taxonomy {cfg.type_names}")
    kept, scores = collect_scores(model, items, batch_size)
    if scores is None:
        raise InputError("no item could be scored (every image failed to decode)")
    finite = (scores.level_logits.isfinite().all(1) & scores.type_logits.isfinite().all(1)).numpy()
    if not finite.all():
        bad = [it.id for it, ok in zip(kept, finite) if not ok]
        raise CalibrationError(
            f"the head gives non-finite scores (NaN or inf) for {len(bad)} of {len(kept)} items (e.g. {bad[0]}): "
            "the modules' weights are broken; calibrate modules whose `safevlm assess` scores are numbers"
        )
    return LabelledScores(
        scores, np.array([it.level for it in kept]), np.array([cfg.type_names.index(it.type) for it in kept])
    )


def calibration_numbers(data: LabelledScores) -> dict[str, float]:
    """ECE, its noise floor (the ECE a calibrated head with these confidences shows on this many items) and NLL."""
    out = {}
    for head in HEADS:
        probs, gold = data.probs(head), data.gold(head)
        out[f"{head}_ece"] = expected_calibration_error(probs, gold)
        out[f"{head}_ece_floor"] = ece_noise_floor(probs)
        out[f"{head}_nll"] = negative_log_likelihood(probs, gold)
    return out


def run_calibration(
    model,
    source: str | Path,
    val_items: Sequence[LabelledImage],
    out_dir: str | Path,
    *,
    target: Target,
    per_type: bool = False,
    test_items: Sequence[LabelledImage] | None = None,
    batch_size: int = 16,
    warn_over_refusal: float = OVER_REFUSAL_WARN,
) -> CalibrationResult:
    """Calibrate ``model``'s head (its modules were loaded from ``source``) and write the results to ``out_dir``.

    "Before" is the head as loaded (if ``source`` already has temperatures, with them); the
    temperatures are always fitted on the raw logits. A split whose over-refusal at the chosen
    thresholds exceeds ``warn_over_refusal`` gets a warning in ``result.warnings`` and the report.
    """
    out = Path(out_dir)
    source_files = checkpoint_files(source)
    if out.resolve() == source_files[0].parent.resolve():
        raise CalibrationError(f"--out {out} is the input modules' folder; calibration never modifies its input")
    check_classes([it.level for it in val_items])  # before scoring: a one-class set is refused at once
    val = score_labelled(model, val_items, batch_size)
    fits = {
        head: fit_head_temperature(getattr(val.scores, f"{head}_logits").float().numpy(), val.gold(head))
        for head in HEADS
    }
    splits = {"validation": val}
    if test_items:
        splits["test"] = score_labelled(model, test_items, batch_size)
    after = {
        name: LabelledScores(
            data.scores.with_temperatures(fits["level"].temperature, fits["type"].temperature),
            data.levels,
            data.types,
        )
        for name, data in splits.items()
    }
    taxonomy = model.config.taxonomy
    val_after = after["validation"]
    choice = choose_thresholds(
        val_after.probs("level"), val_after.probs("type"), val.levels, val.types, taxonomy, target, per_type
    )
    policy = SafetyPolicy.from_dict(choice.policy, taxonomy, source="calibrated policy")
    result = CalibrationResult(out, fits, choice, target, per_type)
    for name, data in splits.items():
        result.splits[name] = {
            "n": int(len(data.levels)),
            "before": calibration_numbers(data),
            "after": calibration_numbers(after[name]),
            "policy": policy_metrics(
                policy, after[name].probs("level"), after[name].probs("type"), data.levels, data.types
            ),
        }
        result.warnings += over_refusal_warnings(result.splits[name]["policy"], warn_over_refusal, name)
    misses = unmet_targets(result.splits["validation"]["policy"], target, per_type)
    if misses:  # the choice is built to meet them; a miss is a bug, not a property of the data
        raise RuntimeError(f"chosen thresholds miss the target on validation: {misses}")

    out.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(
        SafetyConfig.load(source_files[0]),
        level_temperature=fits["level"].temperature,
        type_temperature=fits["type"].temperature,
    )
    config.save(out / CONFIG_NAME)
    shutil.copyfile(source_files[1], out / WEIGHTS_NAME)
    # The model card every saved modules folder carries, with the calibration's own numbers beside the training's.
    calibrated = {f"calibration.{name}": {"n": s["n"], **s["after"]} for name, s in result.splits.items()}
    write_card(out, config, {"metrics": calibrated})
    header = (
        f"# Written by `safevlm calibrate` for the modules in this folder (calibrated probabilities).\n"
        f"# Target on validation: {target.describe()}; thresholds {'per type' if per_type else 'shared'}.\n"
    )
    result.policy_file.write_text(header + yaml.safe_dump(choice.policy, sort_keys=False))
    (out / "calibration.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    _reliability_plots(splits, after, out)
    _write_markdown(result, str(source))
    return result


def summary_lines(result: CalibrationResult) -> list[str]:
    """A few lines for a terminal: temperatures, ECE/NLL before -> after per split, thresholds, policy figures,
    then the warnings."""
    lines = []
    for head, fit in result.temperatures.items():
        lines.append(
            f"{head} temperature: {fit.temperature:.3f} (validation NLL {fit.nll_before:.3f} -> {fit.nll_after:.3f}; "
            f"{fit.note})"
        )
    for name, split in result.splits.items():
        b, a = split["before"], split["after"]
        lines.append(
            f"{name} ({split['n']} items): ECE level {b['level_ece']:.3f} -> {a['level_ece']:.3f} "
            f"(floor {a['level_ece_floor']:.3f}), type {b['type_ece']:.3f} -> {a['type_ece']:.3f} "
            f"(floor {a['type_ece_floor']:.3f}); NLL level {b['level_nll']:.3f} -> "
            f"{a['level_nll']:.3f}, type {b['type_nll']:.3f} -> {a['type_nll']:.3f}"
        )
        p = split["policy"]
        lines.append(
            f"  at the chosen thresholds: recall {fmt(p['recall'], 3)}, refuse recall "
            f"{fmt(p['refuse_recall'], 3)}, precision {fmt(p['precision'], 3)}, over-refusal "
            f"{fmt(p['over_refusal'], 3)}, safe hinted {fmt(p['safe_hinted'], 3)}"
        )
    lines.append("thresholds (hint / refuse): " + _threshold_text(result))
    lines += [f"WARNING: {w}" for w in result.warnings]
    return lines


# ---------------------------------------------------------------------- report


def _finite(values: dict[str, float | None]) -> dict[str, float | str | None]:
    return {k: ("never" if v == math.inf else v) for k, v in values.items()}


def _threshold_text(result: CalibrationResult) -> str:
    def show(v):
        return "default" if v is None else "never" if v == math.inf else f"{v:.4f}"

    hint, refuse = result.choice.hint, result.choice.refuse
    if not result.per_type:
        first = next(iter(hint))
        return f"all types {show(hint[first])} / {show(refuse[first])}"
    return ", ".join(f"{t} {show(hint[t])} / {show(refuse[t])}" for t in hint)


def _write_markdown(result: CalibrationResult, source: str) -> None:
    temps = [
        [head, fit.temperature, fit.nll_before, fit.nll_after, fit.note] for head, fit in result.temperatures.items()
    ]
    calib = [
        [
            name,
            head,
            s["before"][f"{head}_ece"],
            s["after"][f"{head}_ece"],
            s["after"][f"{head}_ece_floor"],
            s["before"][f"{head}_nll"],
            s["after"][f"{head}_nll"],
        ]
        for name, s in result.splits.items()
        for head in HEADS
    ]
    thresholds = [[t, v, result.choice.refuse[t]] for t, v in result.choice.hint.items()]
    thresholds = [
        [
            t,
            "default" if h is None else "never" if h == math.inf else h,
            "default" if r is None else "never" if r == math.inf else r,
        ]
        for t, h, r in thresholds
    ]
    sections = []
    if result.warnings:
        sections.append(("Warnings", "\n".join(f"- **{w}**" for w in result.warnings)))
    sections += [
        (
            "Settings",
            f"- Modules: `{source}` (unchanged); calibrated copy and `policy.yaml` in this folder.\n"
            f"- Target on validation: {result.target.describe()}; thresholds "
            f"{'per risk type' if result.per_type else 'shared by all risk types'}.",
        ),
        (
            "Temperatures",
            markdown_table(
                ["head", "temperature", "validation NLL (T = 1)", "validation NLL (fitted T)", "note"],
                temps,
                digits=4,
            ),
        ),
        (
            "Calibration (before = as loaded, after = with the temperatures)",
            markdown_table(
                ["split", "head", "ECE before", "ECE after", "ECE floor (after)", "NLL before", "NLL after"],
                calib,
                digits=4,
            ),
        ),
        (
            "Thresholds (hint / refuse; on calibrated probabilities)",
            markdown_table(["risk type", "hint", "refuse"], thresholds, digits=4)
            + ("\n\n" + "\n".join(f"- {n}" for n in result.choice.notes) if result.choice.notes else ""),
        ),
    ]
    for name, split in result.splits.items():
        p = split["policy"]
        rows = [["all risky", p["n_risky"], p["recall"], p["refuse_recall"], p["precision"], p["over_refusal"]]]
        rows += [
            [t, m["n"], m["recall"], m["refuse_recall"], m["precision"], m["over_refusal"]]
            for t, m in p["types"].items()
        ]
        sections.append(
            (
                f"Policy at the chosen thresholds: {name}",
                markdown_table(
                    [
                        "risk type",
                        "items",
                        "recall (hint or refuse)",
                        "refuse recall (top level)",
                        "precision",
                        "over-refusal (safe refused)",
                    ],
                    rows,
                    digits=3,
                )
                + f"\n\n{p['n_safe']} safe items: {fmt(p['over_refusal'], 3)} refused, "
                f"{fmt(p['safe_hinted'], 3)} hinted.",
            )
        )
    sections.append(
        (
            "Notes",
            "- ECE: top-label, 15 equal-width bins; NLL: mean -log p(true class). ECE floor: the mean ECE of a "
            "perfectly calibrated head with the same confidences on as many items (sampling noise alone); an "
            "ECE near it is as calibrated as this many items can show.\n"
            "- Thresholds meet the target on validation by construction; test figures are what "
            "they give on held-out items, not a guarantee.\n"
            "- Per-type over-refusal counts safe items refused with that type reported.\n"
            "- Plots: " + ", ".join(f"reliability_{n}.png" for n in result.splits) + ".",
        )
    )
    write_markdown(result.out_dir / "calibration.md", "Calibration of the safety head", sections)


def _reliability_plots(before: dict[str, LabelledScores], after: dict[str, LabelledScores], out: Path) -> None:
    from matplotlib.figure import Figure  # a figure of its own: no pyplot, no global backend

    for name in before:
        fig = Figure(figsize=(9, 4.8))
        axes = fig.subplots(1, 2)
        for ax, head in zip(axes, HEADS):
            ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
            for label, data, style in (("before", before[name], "o-"), ("after", after[name], "s-")):
                probs, gold = data.probs(head), data.gold(head)
                bins = reliability_bins(probs, gold)
                filled = bins["count"] > 0
                ece = expected_calibration_error(probs, gold)
                ax.plot(bins["confidence"][filled], bins["accuracy"][filled], style, label=f"{label} (ECE {ece:.3f})")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("confidence (top probability)")
            ax.set_ylabel("accuracy")
            ax.set_title(f"{head} head, {name}")
            # Below the axes: a curve can run anywhere inside them.
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, ncol=3)
        fig.tight_layout()
        fig.savefig(out / f"reliability_{name}.png", dpi=90, bbox_inches="tight")
