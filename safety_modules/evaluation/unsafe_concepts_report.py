"""The UnsafeConcepts report: `results.md` / CSV beside the published rows, and the modality-gap plot."""

from __future__ import annotations

from pathlib import Path

from .report import markdown_table, write_csv, write_html, write_markdown

# LLaVA-v1.5-7B rows committed in the SaferVLM repository (results/*.xlsx, RoBERTa classifiers). They are
# intermediate artifacts that may differ from the paper; no visual-alignment numbers were committed.
PUBLISHED_LLAVA_7B: dict[str, dict[str, float]] = {
    "perception": {
        "Hate": 0.856,
        "Harassment": 0.945,
        "Violence": 0.802,
        "Self-harm": 0.972,
        "Sexual": 1.000,
        "Shocking": 0.967,
        "Illegal activity": 0.967,
        "Deception": 0.957,
        "Public and personal health": 0.931,
        "overall": 0.932,
    },
    "text_only": {
        "Hate": 0.911,
        "Harassment": 0.939,
        "Violence": 0.955,
        "Self-harm": 0.971,
        "Sexual": 0.909,
        "Shocking": 0.933,
        "Illegal activity": 0.977,
        "Deception": 0.957,
        "Public and personal health": 1.000,
        "overall": 0.945,
    },
}


def write_unsafe_concepts_report(metrics: dict, out: Path, model_name: str) -> None:
    sections = []
    approximate = metrics["parser"].startswith("rules")
    keys: list[str] = []
    for part in ("perception", "alignment", "text_only"):
        for key in metrics.get(part, {}):
            if key not in keys:
                keys.append(key)
    keys = [k for k in keys if k != "overall"] + ["overall"]
    if "perception" in metrics:
        p = metrics["perception"]
        rows = [
            [k, p[k]["accuracy"], p[k]["valid"], p[k]["na"], p[k]["n"], PUBLISHED_LLAVA_7B["perception"].get(k)]
            for k in keys
            if k in p
        ]
        header = ["category", "perception accuracy", "valid", "N/A", "n", "LLaVA-v1.5-7B (SaferVLM repo)"]
        write_csv(out / "perception.csv", header, rows)
        sections.append(
            ("Perception (multiple choice; accuracy over non-N/A answers)", markdown_table(header, rows, digits=3))
        )
    if "alignment" in metrics or "text_only" in metrics:
        vis, txt, gap = metrics.get("alignment", {}), metrics.get("text_only", {}), metrics.get("modality_gap", {})
        rows = [
            [
                k,
                vis.get(k, {}).get("accuracy"),
                txt.get(k, {}).get("accuracy"),
                gap.get(k),
                vis.get(k, {}).get("na"),
                txt.get(k, {}).get("na"),
                PUBLISHED_LLAVA_7B["text_only"].get(k),
            ]
            for k in keys
        ]
        header = [
            "category",
            "visual alignment acc",
            "text-only acc",
            "modality gap (text - visual)",
            "visual NA",
            "text NA",
            "LLaVA-v1.5-7B text-only (SaferVLM repo)",
        ]
        write_csv(out / "alignment.csv", header, rows)
        sections.append(
            (
                "Alignment (share of valid answers judged Unsafe) and modality gap",
                markdown_table(header, rows, digits=3),
            )
        )
        if gap:
            _plot_gap(vis, txt, [k for k in keys if k in vis and k in txt], out / "modality_gap.png")
        if (vis or txt) and all(d.get("accuracy") is None for d in [*vis.values(), *txt.values()]):
            sections.append(("No alignment data", "Every alignment answer was N/A: there is no valid answer to judge."))
    if "gate" in metrics:
        rows, header = [], ["part", "category", "refused", "hinted", "allowed", "n"]
        for part, stats in metrics["gate"].items():
            rows += [[part, k, s["refuse"], s["hint"], s["allow"], s["n"]] for k, s in stats.items()]
        write_csv(out / "gate.csv", header, rows)
        sections.append(("Gate on (share of queries the policy refuses / hints)", markdown_table(header, rows, 3)))
    notes = [f"Response parser: {metrics['parser']}."]
    if approximate:
        notes.append("**APPROXIMATE**: labels come from the rule parser, not the published RoBERTa classifiers.")
    notes.append(
        "The LLaVA-v1.5-7B columns are results committed in the SaferVLM repository (RoBERTa classifiers; "
        "they may differ from the paper); no visual-alignment numbers were committed there."
    )
    sections.append(("Notes", "\n".join(f"- {n}" for n in notes)))
    write_markdown(out / "results.md", f"UnsafeConcepts: {model_name}", sections)
    plots = (
        [("Modality gap: visual vs text-only alignment", out / "modality_gap.png")] if "alignment" in metrics else []
    )
    write_html(out / "results.html", f"UnsafeConcepts: {model_name}", sections, plots)


def _plot_gap(visual: dict, text: dict, keys: list[str], path: Path) -> None:
    gap_figure(visual, text, keys).savefig(path, dpi=100, bbox_inches="tight")


def gap_figure(visual: dict, text: dict, keys: list[str]):
    """Visual vs text-only alignment per category; a "no data" note instead of empty axes when no answer
    was valid (every one N/A). A `Figure` of its own (no pyplot, no global backend)."""
    import numpy as np
    from matplotlib.figure import Figure

    x = np.arange(len(keys))
    value = lambda d, k: np.nan if d[k]["accuracy"] is None else d[k]["accuracy"]  # noqa: E731
    visual_values, text_values = [value(visual, k) for k in keys], [value(text, k) for k in keys]
    fig = Figure(figsize=(10, 4.2))
    ax = fig.subplots()
    ax.bar(x - 0.2, visual_values, 0.4, label="visual alignment", color="#4c72b0")
    ax.bar(x + 0.2, text_values, 0.4, label="text-only alignment", color="#8c8c8c")
    ax.set_xticks(x, keys, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_xlabel("UnsafeConcepts category")
    ax.set_ylabel("share of valid answers judged Unsafe")
    ax.set_title("UnsafeConcepts: modality gap")
    if np.all(np.isnan(visual_values + text_values)):
        ax.text(
            0.5,
            0.5,
            "no data: every answer was N/A (no valid answer to judge)",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=12,
            color="#555555",
        )
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig
