"""What a training run records in the modules it saves (``SafetyConfig.training``), for the model card
and for `safevlm assess`, which warns about modules that were never trained."""

from __future__ import annotations

from typing import Any

from torch.utils.data import ConcatDataset


def training_record(
    stage: int, steps: int, train_files: list[str], train_set: ConcatDataset, eval_files: list[Any] | None,
    eval_set: ConcatDataset | None, eval_history: list[dict[str, float]],
) -> dict[str, Any]:  # fmt: skip
    """Stage, optimizer steps, each data file with its record count, and the last held-out metrics."""
    record: dict[str, Any] = {
        "stage": stage,
        "steps": steps,
        "train_data": {_path(f): len(d) for f, d in zip(train_files, train_set.datasets)},
    }
    if eval_set is not None and eval_files:
        record["eval_data"] = {_path(f): len(d) for f, d in zip(eval_files, eval_set.datasets)}
    if eval_history:
        record["heldout_metrics"] = {k: v for k, v in eval_history[-1].items() if k != "step"}
    return record


def _path(data_file: Any) -> str:
    """A recipe's data entry (a `DataFile`, or a path) as the path it reads."""
    return str(getattr(data_file, "path", data_file))
