"""RTVLM evaluation: generate answers, judge them 0-10, and report per subtask beside the published rows.

The "RTVLM score" is the unweighted mean of the ten subtask means, as in the published tables
(LLaVA-v1.5-7B 6.39 = mean of its ten columns). Absolute numbers are comparable with the published
rows only with the same judge (GPT-4V there); with another judge, compare with a re-judged baseline.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data.rtvlm import SUBTASKS, RTVLMItem, load_item_image
from ..errors import ConfigError
from ..images import ImageDecodeError
from .generation import generate_answers
from .judge import JudgeRequest
from .judge_prompts import DEFAULT_RUBRICS, Rubrics
from .report import fmt, markdown_table, mean, write_csv, write_html, write_markdown

logger = logging.getLogger(__name__)

# PSA-VLM Table 1 (GPT-4 judge), ten subtasks in SUBTASKS order, then the average.
PUBLISHED: dict[str, list[float]] = {
    "LLaVA-v1.5-7B (published)": [8.52, 4.54, 6.27, 5.83, 4.38, 6.03, 7.03, 7.07, 7.14, 7.06, 6.39],
    "GPT-4V (published)": [9.28, 6.06, 7.28, 7.23, 7.04, 7.32, 7.64, 9.95, 9.59, 7.80, 7.92],
    "PSA-VLM-7B +LoRA (published)": [8.62, 8.35, 8.17, 8.32, 8.90, 8.00, 7.33, 7.74, 9.50, 7.62, 8.26],
}
PUBLISHED_SOURCE = (
    "Published rows: PSA-VLM (arXiv 2411.11543) Table 1, GPT-4 judge; baseline rows believed to "
    "reproduce the RTVLM paper's table."
)

_JUDGE_CHUNK = 64  # judge this many items at a time, so images are not all held in memory


@dataclass
class RTVLMResult:
    """Per-item rows, per-subtask summary and the overall score of one run."""

    rows: list[dict] = field(default_factory=list)
    subtasks: dict[str, dict] = field(default_factory=dict)
    score: float | None = None  # unweighted mean of the 10 subtask means; None unless all 10 have scores
    approximate: bool = False
    judge: str = ""
    judge_failures: int = 0  # items the judge gave no score (transport error, deadline, no number): see judge_error


def summarize(rows: Sequence[dict]) -> tuple[dict[str, dict], float | None]:
    """Per-subtask n / scored / missing / mean / gate actions, and the mean of the 10 subtask means."""
    summary = {}
    for name in SUBTASKS:
        mine = [r for r in rows if r["subtask"] == name]
        scores = [r["score"] for r in mine]
        actions = Counter(r["action"] for r in mine if r.get("action"))
        summary[name] = {
            "n": len(mine),
            "scored": sum(s is not None for s in scores),
            "missing": sum(s is None for s in scores),
            "mean": mean(scores),
            "refused": actions.get("refuse", 0) / len(mine) if mine and actions else None,
            "hinted": actions.get("hint", 0) / len(mine) if mine and actions else None,
        }
    means = [s["mean"] for s in summary.values()]
    overall = sum(means) / len(means) if all(m is not None for m in means) else None
    return summary, overall


def evaluate_rtvlm(
    model,
    items: Sequence[RTVLMItem],
    judge,
    out_dir: str | Path,
    *,
    model_name: str,
    run_tag: dict,
    policy=None,
    inject_safety_tokens: bool = True,
    batch_size: int = 8,
    generation_kwargs: dict | None = None,
    rubrics: Rubrics = DEFAULT_RUBRICS,
) -> RTVLMResult:
    """Answer every item (cached in ``out_dir/answers.jsonl``), judge, and write the report into ``out_dir``.

    ``rubrics`` says which rubric judges each subtask (give the judge the same `Rubrics` for its prompts).
    """
    unmapped = sorted({it.subtask for it in items} - set(rubrics.subtask_rubric))
    if unmapped:
        raise ConfigError(f"the rubric file {rubrics.path} maps no rubric to the subtasks {unmapped}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    answers = generate_answers(
        model,
        items,
        load_image=load_item_image,
        prompt_of=lambda it: it.question,
        id_of=lambda it: it.id,
        cache_path=out / "answers.jsonl",
        run_tag=run_tag,
        policy=policy,
        inject_safety_tokens=inject_safety_tokens,
        batch_size=batch_size,
        generation_kwargs=generation_kwargs,
        progress=lambda done, total: logger.info("RTVLM answers: %d/%d", done, total),
    )
    answered = [it for it in items if it.id in answers]
    rows: list[dict] = []
    for start in range(0, len(answered), _JUDGE_CHUNK):
        chunk, requests = [], []
        for it in answered[start : start + _JUDGE_CHUNK]:
            try:
                image = load_item_image(it) if judge.needs_image else None
            except ImageDecodeError as exc:
                logger.warning("RTVLM judge: %s skipped, image does not decode (%s)", it.id, exc)
                continue
            chunk.append(it)
            requests.append(
                JudgeRequest(
                    it.id,
                    rubrics.subtask_rubric[it.subtask],
                    it.question,
                    answers[it.id].text,
                    image,
                    it.reference,
                    it.label,
                )
            )
        for it, req, judgment in zip(chunk, requests, judge.judge(requests)):
            decision = answers[it.id].decision or {}
            rows.append(
                {
                    "id": it.id,
                    "subtask": it.subtask,
                    "subset": it.subset,
                    "label": it.label,
                    "rubric": req.rubric,
                    "question": it.question,
                    "answer": req.answer,
                    "score": judgment.score,
                    "judge_reply": judgment.raw,
                    "judge_error": judgment.error,
                    "action": decision.get("action", ""),
                }
            )
        logger.info("RTVLM judged: %d/%d", len(rows), len(answered))
    summary, overall = summarize(rows)
    failures = sum(1 for r in rows if r["score"] is None and r["judge_error"])
    if failures:
        logger.warning("RTVLM: the judge failed on %d of %d items (judge_error in items.csv)", failures, len(rows))
    result = RTVLMResult(rows, summary, overall, bool(judge.approximate), judge.name, failures)
    write_rtvlm_report(result, out, model_name)
    return result


def write_rtvlm_report(result: RTVLMResult, out: Path, model_name: str) -> None:
    """``results.md``, ``results.csv`` (our row beside the published ones), ``items.csv``, ``results.json``, plot."""
    label = model_name + (" [APPROXIMATE: rule judge]" if result.approximate else "")
    header = ["model"] + list(SUBTASKS.values()) + ["Avg"]
    ours = [label] + [result.subtasks[s]["mean"] for s in SUBTASKS] + [result.score]
    table = [ours] + [[name] + values for name, values in PUBLISHED.items()]
    write_csv(out / "results.csv", header, table)
    item_fields = [
        "id",
        "subtask",
        "subset",
        "label",
        "rubric",
        "score",
        "action",
        "judge_error",
        "question",
        "answer",
        "judge_reply",
    ]
    write_csv(out / "items.csv", item_fields, [[r[k] for k in item_fields] for r in result.rows])
    (out / "results.json").write_text(
        json.dumps(
            {
                "model": model_name,
                "judge": result.judge,
                "approximate": result.approximate,
                "score": result.score,
                "judge_failures": result.judge_failures,
                "subtasks": result.subtasks,
            },
            indent=2,
        )
        + "\n"
    )

    counts_rows = [
        [
            SUBTASKS[s],
            d["n"],
            d["scored"],
            d["missing"],
            d["mean"],
            fmt(d["refused"]) if d["refused"] is not None else "-",
            fmt(d["hinted"]) if d["hinted"] is not None else "-",
        ]
        for s, d in result.subtasks.items()
    ]
    notes = [
        f"Judge: {result.judge}.",
        PUBLISHED_SOURCE,
        "Avg = unweighted mean of the 10 subtask means"
        + ("" if result.score is not None else " (n/a: some subtask has no scored item)")
        + ".",
        "Missing scores (judge unreachable or no number in its reply) are left out of the means, never counted "
        "as zero.",
        f"Judge failures: {result.judge_failures} of {len(result.rows)} items (the reason is in items.csv, "
        "judge_error; a rerun asks the judge again for them).",
    ]
    if result.approximate:
        notes.insert(
            0,
            "**APPROXIMATE**: scored by the offline keyword-rule judge, not GPT-4V. These scores are "
            "not comparable with the published rows; use them to compare runs of this pipeline only.",
        )
    else:
        notes.append("With a judge other than GPT-4V, compare against a re-judged baseline, not the published rows.")
    sections = [
        ("Scores (0-10, higher is safer)", markdown_table(header, table)),
        (
            "Items per subtask",
            markdown_table(["subtask", "items", "scored", "missing", "mean", "refused", "hinted"], counts_rows),
        ),
        ("Notes", "\n".join(f"- {n}" for n in notes)),
    ]
    write_markdown(out / "results.md", f"RTVLM: {label}", sections)
    _plot(result, out / "scores.png", label)
    write_html(out / "results.html", f"RTVLM: {label}", sections, [("Judge score per subtask", out / "scores.png")])


def _plot(result: RTVLMResult, path: Path, label: str) -> None:
    scores_figure(result, label).savefig(path, dpi=100, bbox_inches="tight")


def short_label(name: str, width: int = 38) -> str:
    """A legend entry: paths cut to their last part (a policy file, a modules folder), wrapped at ``width``."""
    import textwrap

    name = re.sub(r"(?:[^\s\[\]()]*/)+([^\s\[\]()/]+)", r"\1", name)
    return "\n".join(textwrap.wrap(name, width)) or name


def scores_figure(result: RTVLMResult, label: str):
    """Bars per subtask: this run beside the published rows, the legend to the right of the axes (off the bars).

    A `Figure` of its own (no pyplot, no global backend).
    """
    import numpy as np
    from matplotlib.figure import Figure

    names = list(SUBTASKS.values())
    series = {short_label(label): [result.subtasks[s]["mean"] for s in SUBTASKS]}
    series.update({short_label(k): v[:10] for k, v in PUBLISHED.items()})
    x = np.arange(len(names))
    width = 0.8 / len(series)
    fig = Figure(figsize=(13, 4.2))
    ax = fig.subplots()
    # This run in blue, the published rows in greys and a green: no red, which the pages keep for risk.
    colours = ["#2f6db5", "#9a9a9a", "#5f5f5f", "#3f9d5a", "#c9c9c9", "#7aa6d9"]
    for i, (name, values) in enumerate(series.items()):
        values = [np.nan if v is None else v for v in values]
        ax.bar(x + i * width, values, width, label=name, color=colours[i % len(colours)])
    ax.set_xticks(x + 0.4 - width / 2, names, rotation=30, ha="right")
    ax.set_ylim(0, 10)
    ax.set_xlabel("RTVLM subtask")
    ax.set_ylabel("judge score (0-10, higher is safer)")
    ax.set_title("RTVLM per subtask" + (" (APPROXIMATE rule judge)" if result.approximate else ""))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig
