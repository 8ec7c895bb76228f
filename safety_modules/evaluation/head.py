"""The safety head as a classifier over any labelled image set.

Sources (auto-detected from the path):

- a training-format JSON / JSONL file (records with ``image``, ``conversations`` and ``safety``);
  the first human turn is given to the head as the prompt;
- an UnsafeConcepts folder (either layout): every image risky, (level, type) from the category mapping;
- a folder of images: every image safe (level 0, the safe type), e.g. for over-refusal.

Reports: risky-vs-safe AUROC (score = 1 - P(level 0)) and accuracy (argmax level > 0), level and
type accuracy, level and type ECE (calibration), per-type recall, level and type confusion
matrices, and under a policy the over-refusal rate on safe items (share refused; share hinted
beside it). PNGs: ROC curve and confusion matrices.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.format import question_text, read_records
from ..errors import InputError
from ..images import decode_image
from ..metrics import ECE_BINS, head_metrics, p_risky
from ..modeling import SafetyScores
from ..taxonomy import SAFE_LABEL, UNSAFE_CONCEPTS_CATEGORY_LABELS
from .generation import decide_all, decodable_batches
from .report import markdown_table, write_csv, write_markdown

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class LabelledImage:
    id: str
    source: str
    level: int
    type: str
    load: Callable[[], Image.Image]
    prompt: str | None = None


def _records(path: Path) -> list[LabelledImage]:
    """A training-format file (validated by `read_records`); image paths are relative to its folder."""
    items = []
    for record in read_records(path):
        image = path.parent / record["image"]
        items.append(
            LabelledImage(
                str(record["id"]),
                path.name,
                int(record["safety"]["level"]),
                str(record["safety"]["type"]),
                lambda image=image: decode_image(image),
                question_text(record) or None,
            )
        )
    return items


def _is_unsafe_concepts(path: Path) -> bool:
    return any((p / "metadata.jsonl").is_file() for p in (path, path / "UnsafeConcepts")) or any(
        path.glob("data/train-*.parquet")
    )


def load_labelled(path: str | Path, mapping: Mapping[str, tuple[int, str]] | None = None) -> list[LabelledImage]:
    """Labelled images from a training-format file, an UnsafeConcepts folder or a folder of safe images."""
    path = Path(path)
    if path.is_file():
        return _records(path)
    if not path.is_dir():
        raise FileNotFoundError(f"labelled data not found: {path}")
    if _is_unsafe_concepts(path):
        from ..data.unsafe_concepts import load_unsafe_concepts

        mapping = UNSAFE_CONCEPTS_CATEGORY_LABELS if mapping is None else mapping
        data = load_unsafe_concepts(path)
        unmapped = sorted({item.category for item in data.items} - set(mapping))
        if unmapped:
            raise InputError(f"no (level, type) for UnsafeConcepts categories {unmapped} in the mapping")
        return [
            LabelledImage(item.id, "UnsafeConcepts", *mapping[item.category], item.load_image) for item in data.items
        ]
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"{path} holds no images, training records or UnsafeConcepts files")
    return [
        LabelledImage(str(f.relative_to(path)), path.name, SAFE_LABEL[0], SAFE_LABEL[1], lambda f=f: decode_image(f))
        for f in files
    ]


def collect_scores(model, items: Sequence[LabelledImage], batch_size: int = 16):
    """The head's scores for each decodable item: (kept items, `SafetyScores` on the CPU, or None if none kept).

    The scores hold the raw logits and the model's temperatures, so ``.level_probs`` are the
    probabilities the gate would use and ``.uncalibrated()`` gives the raw head's.
    """
    kept, parts = [], []
    for batch, images, _ in decodable_batches(items, lambda it: it.load(), lambda it: it.id, batch_size, "head eval"):
        if not batch:
            continue
        prompts = [it.prompt or "" for it in batch] if any(it.prompt for it in batch) else None
        parts.append(model.assess(images, prompts).cpu())
        kept += batch
    return kept, (SafetyScores.cat(parts) if parts else None)


def score_items(model, items: Sequence[LabelledImage], batch_size: int = 16, policy=None):
    """Head probabilities for each decodable item, and the policy's action when a policy is given.

    Returns (kept items, level probs (N, L), type probs (N, T), actions ("" without a policy)).
    """
    kept, scores = collect_scores(model, items, batch_size)
    if scores is None:
        return kept, np.zeros((0, model.config.num_levels)), np.zeros((0, model.config.num_types)), []
    actions = [d["action"] for d in decide_all(scores, policy)] if policy is not None else [""] * len(kept)
    return kept, scores.level_probs.numpy(), scores.type_probs.numpy(), actions


def classification_metrics(
    gold_levels: np.ndarray,
    gold_types: np.ndarray,
    level_probs: np.ndarray,
    type_probs: np.ndarray,
    type_names: Sequence[str],
    safe_type: str,
) -> dict:
    """The shared head metrics (`safety_modules.metrics`) plus what a report draws: the ROC curve,
    risky-vs-safe accuracy and the level/type confusion matrices."""
    from sklearn.metrics import accuracy_score, confusion_matrix, roc_curve

    shared = head_metrics(gold_levels, gold_types, level_probs, type_probs, type_names)
    risky = gold_levels > 0
    both = risky.any() and (~risky).any()
    fpr, tpr, _ = roc_curve(risky, p_risky(level_probs)) if both else (np.array([]), np.array([]), None)
    pred_levels = level_probs.argmax(1)
    return {
        "n": int(len(gold_levels)),
        "n_risky": int(risky.sum()),
        "n_safe": int((~risky).sum()),
        "auroc": shared["risk_auroc"] if both else None,
        "risky_accuracy": float(accuracy_score(risky, pred_levels > 0)),
        "level_accuracy": shared["level_accuracy"],
        "level_macro_f1": shared["level_macro_f1"],
        "type_accuracy": shared["type_accuracy"],
        "type_macro_f1": shared["type_macro_f1"],
        "level_ece": shared["level_ece"],
        "type_ece": shared["type_ece"],
        "type_recall": {name: shared.get(f"recall/{name}") for name in type_names},
        "level_confusion": confusion_matrix(
            gold_levels, pred_levels, labels=list(range(level_probs.shape[1]))
        ).tolist(),
        "type_confusion": confusion_matrix(
            gold_types, type_probs.argmax(1), labels=list(range(len(type_names)))
        ).tolist(),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
        "safe_type": safe_type,
    }


def evaluate_head(
    model, items: Sequence[LabelledImage], out_dir: str | Path, *, model_name: str, policy=None, batch_size: int = 16
) -> dict:
    """Score every item with the head, compute the metrics, write the report (results.md, CSV, PNGs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    unknown = sorted({it.type for it in items} - set(cfg.type_names))
    if unknown:
        raise InputError(f"label types {unknown} are not in the head's taxonomy {cfg.type_names}")
    kept, level_probs, type_probs, actions = score_items(model, items, batch_size, policy)
    if not kept:
        raise InputError("no item could be scored (every image failed to decode)")
    gold_levels = np.array([it.level for it in kept])
    gold_types = np.array([cfg.type_names.index(it.type) for it in kept])
    metrics = classification_metrics(gold_levels, gold_types, level_probs, type_probs, cfg.type_names, cfg.safe_type)
    if policy is not None:
        safe = [a for a, level in zip(actions, gold_levels) if level == 0]
        metrics["over_refusal"] = sum(a == "refuse" for a in safe) / len(safe) if safe else None
        metrics["safe_hinted"] = sum(a == "hint" for a in safe) / len(safe) if safe else None
    metrics["sources"] = sorted({it.source for it in kept})
    write_head_report(metrics, kept, level_probs, type_probs, actions, cfg, out, model_name)
    return metrics


def write_head_report(metrics: dict, items, level_probs, type_probs, actions, cfg, out: Path, model_name: str) -> None:
    fields = ["id", "source", "gold_level", "gold_type", "pred_level", "pred_type", "risk_score", "action"]
    rows = [
        [
            it.id,
            it.source,
            it.level,
            it.type,
            int(lp.argmax()),
            cfg.type_names[int(tp.argmax())],
            float(risk),
            action,
        ]
        for it, lp, tp, risk, action in zip(items, level_probs, type_probs, p_risky(level_probs), actions)
    ]
    write_csv(out / "items.csv", fields, rows)
    summary = [
        ["items (risky / safe)", f"{metrics['n']} ({metrics['n_risky']} / {metrics['n_safe']})"],
        ["risky-vs-safe AUROC", metrics["auroc"]],
        ["risky-vs-safe accuracy", metrics["risky_accuracy"]],
        ["level accuracy", metrics["level_accuracy"]],
        ["type accuracy", metrics["type_accuracy"]],
        [f"level ECE ({ECE_BINS} bins)", metrics["level_ece"]],
        [f"type ECE ({ECE_BINS} bins)", metrics["type_ece"]],
    ]
    if "over_refusal" in metrics:
        summary += [
            ["over-refusal on safe items (refused)", metrics["over_refusal"]],
            ["safe items hinted", metrics["safe_hinted"]],
        ]
    write_csv(out / "summary.csv", ["metric", "value"], summary)
    recall_rows = [[name, value] for name, value in metrics["type_recall"].items()]
    write_csv(out / "type_recall.csv", ["type", "recall"], recall_rows)
    confusion = [[cfg.level_names[i]] + row for i, row in enumerate(metrics["level_confusion"])]
    write_csv(out / "level_confusion.csv", ["gold \\ predicted"] + list(cfg.level_names), confusion)
    (out / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "roc"}, indent=2) + "\n")
    write_markdown(
        out / "results.md",
        f"Safety head: {model_name}",
        [
            ("Summary", markdown_table(["metric", "value"], summary, digits=3)),
            ("Per-type recall", markdown_table(["type", "recall"], recall_rows, digits=3)),
            (
                "Level confusion (rows gold, columns predicted)",
                markdown_table(["gold \\ predicted"] + list(cfg.level_names), confusion),
            ),
            (
                "Notes",
                f"- Data: {', '.join(metrics['sources'])}.\n- Risk score = 1 - P(level 0); AUROC n/a when the "
                "set has only one class.\n- ECE: top-label expected calibration error, 15 equal-width bins "
                "(0 = perfectly calibrated; see docs/calibration.md).\n"
                "- Plots: roc.png, level_confusion.png, type_confusion.png.",
            ),
        ],
    )
    _plots(metrics, cfg, out)


def _plots(metrics: dict, cfg, out: Path) -> None:
    """``roc.png`` and the two confusion matrices; each a `Figure` of its own (no pyplot, no global backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    if metrics["auroc"] is not None:
        ax.plot(metrics["roc"]["fpr"], metrics["roc"]["tpr"], label=f"AUROC {metrics['auroc']:.3f}")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no ROC: the data hold one class only", ha="center", transform=ax.transAxes)
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set_xlabel("false positive rate (safe flagged)")
    ax.set_ylabel("true positive rate (risky flagged)")
    ax.set_title("Safety head: risky vs safe")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=100)
    for name, matrix, labels in (
        ("level_confusion", metrics["level_confusion"], cfg.level_names),
        ("type_confusion", metrics["type_confusion"], cfg.type_names),
    ):
        matrix = np.array(matrix)
        fig = Figure(figsize=(1.6 + 0.8 * len(labels), 1.2 + 0.7 * len(labels)))
        ax = fig.subplots()
        ax.imshow(matrix, cmap="Blues")  # shades count items; they say nothing about risk
        ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(name.replace("_", " ") + " (items)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
