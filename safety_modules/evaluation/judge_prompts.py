"""RTVLM judge prompts: `Rubrics` (preamble, five 0-10 bands per rubric, closing line, subtask -> rubric).

They are read from ``rubrics/rtvlm.yaml`` next to this module (the packaged default, and the one place
they are written; its header says where they come from) or from another file of that shape named by
an eval recipe (``eval/rtvlm.yaml``: ``rubrics:``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..safe_files import read_yaml

DEFAULT_RUBRICS_PATH = Path(__file__).parent / "rubrics" / "rtvlm.yaml"


@dataclass(frozen=True)
class Rubrics:
    """Judge prompts: ``bands[rubric]`` is a list of (band, text); ``subtask_rubric`` maps subtasks to rubrics."""

    preamble: str
    closing: str
    bands: dict[str, list[tuple[str, str]]]
    subtask_rubric: dict[str, str]
    reference_rubrics: frozenset[str]
    path: str = ""

    def prompt(self, rubric: str, question: str, answer: str, reference: str = "") -> str:
        """The full text sent to the judge with the image."""
        bands = "\n".join(f"{band}: {text}" for band, text in self.bands[rubric])
        ref = f"Reference answer: {reference}\n" if reference and rubric in self.reference_rubrics else ""
        return (
            f"{self.preamble}\nQuestion: {question}\n{ref}Model Output: {answer}\n"
            f"Scoring Guide:\n{bands}\n{self.closing}"
        )


def load_rubrics(path: str | Path | None = None) -> Rubrics:
    """Read a rubric file (default: the packaged ``rubrics/rtvlm.yaml``) and check that it is complete."""

    path = Path(path) if path is not None else DEFAULT_RUBRICS_PATH
    if not path.is_file():
        raise FileNotFoundError(f"rubric file not found: {path}")
    data = read_yaml(path, "rubric file")
    keys = {"preamble", "closing", "rubrics", "subtask_rubric", "reference_rubrics"}
    if not isinstance(data, dict) or set(data) != keys:
        raise ConfigError(f"{path}: a rubric file holds exactly the keys {sorted(keys)}")
    bands = {
        str(name): [(str(band), str(text)) for band, text in (entries or {}).items()]
        for name, entries in data["rubrics"].items()
    }
    empty = sorted(name for name, entries in bands.items() if not entries)
    unknown = sorted(
        {r for r in data["subtask_rubric"].values() if r not in bands}
        | {r for r in data["reference_rubrics"] if r not in bands}
    )
    if empty or unknown:
        raise ConfigError(f"{path}: rubrics without bands {empty}; rubrics named but not defined {unknown}")
    return Rubrics(
        str(data["preamble"]).strip(),
        str(data["closing"]).strip(),
        bands,
        {str(k): str(v) for k, v in data["subtask_rubric"].items()},
        frozenset(data["reference_rubrics"]),
        str(path),
    )


DEFAULT_RUBRICS = load_rubrics()
# Kept for callers of the earlier module constants; both are views of the packaged rubric file.
RUBRICS: dict[str, list[tuple[str, str]]] = DEFAULT_RUBRICS.bands
SUBTASK_RUBRIC: dict[str, str] = DEFAULT_RUBRICS.subtask_rubric


def judge_prompt(
    rubric: str, question: str, answer: str, reference: str = "", rubrics: Rubrics = DEFAULT_RUBRICS
) -> str:
    """The full text sent to the judge with the image (``rubrics``: the packaged ones by default)."""
    return rubrics.prompt(rubric, question, answer, reference)
