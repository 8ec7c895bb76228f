"""Eval recipes: the settings of a benchmark run, read from YAML (``eval/*.yaml``) the way ``train/`` recipes are.

Every recipe key has a command-line flag of the same name (``judge_model`` <-> ``--judge-model``);
a flag that is given wins over the recipe, and a key that neither gives takes the default below
(the defaults are the command's behaviour without a recipe). Paths are relative to the folder
the command runs in, as in ``train/``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

RTVLM_SPLITS = ("all", "train", "test")
JUDGES = ("api", "rules")
UNSAFE_CONCEPTS_PARTS = ("perception", "alignment", "text_only")


@dataclass
class RTVLMRecipe:
    """How RTVLM is run: the judge and its prompts, the gate policy, generation, the items."""

    benchmark: ClassVar[str] = "rtvlm"

    judge: str = "api"  # api: an OpenAI-compatible endpoint; rules: the APPROXIMATE offline judge
    judge_url: str | None = None
    judge_model: str | None = None
    judge_key_env: str = "JUDGE_API_KEY"
    judge_temperature: float = 0.0
    judge_max_tokens: int = 16
    judge_concurrency: int = 4
    judge_retries: int = 5
    judge_parse_retries: int = 2
    judge_timeout: float = 120.0  # seconds for one judge request, all of it (not per read)
    judge_deadline: float = 600.0  # seconds for one item, its retries included; then it is recorded as failed
    rubrics: str | None = None  # a rubric file; None = the packaged safety_modules/evaluation/rubrics/rtvlm.yaml
    policy: str = "default"
    batch_size: int = 8
    max_new_tokens: int = 512
    split: str = "all"
    seed: int = 0
    train_fraction: float = 0.8
    subtasks: list[str] | None = None
    limit_per_subtask: int | None = None

    def __post_init__(self) -> None:
        _choice("judge", self.judge, JUDGES)
        _choice("split", self.split, RTVLM_SPLITS)
        _positive(self, "batch_size", "max_new_tokens", "judge_max_tokens", "judge_concurrency")
        for name in ("judge_timeout", "judge_deadline"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"train_fraction must be between 0 and 1, got {self.train_fraction}")
        if self.judge_temperature < 0:
            raise ValueError(f"judge_temperature must be >= 0, got {self.judge_temperature}")


@dataclass
class UnsafeConceptsRecipe:
    """How UnsafeConcepts is run: parts, the response parser (rules or the published classifiers), generation."""

    benchmark: ClassVar[str] = "unsafe_concepts"

    parts: list[str] = field(default_factory=lambda: list(UNSAFE_CONCEPTS_PARTS))
    limit_per_category: int | None = None
    policy: str = "default"
    batch_size: int = 8
    max_new_tokens: int = 512
    perception_metadata: str | None = None  # default: beside the data
    classifier_encoder: str | None = None  # local RoBERTa folder; with the two classifiers below
    perception_classifier: str | None = None  # None for both: the APPROXIMATE rule parser
    alignment_classifier: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.parts) - set(UNSAFE_CONCEPTS_PARTS))
        if unknown or not self.parts:
            raise ValueError(f"parts must be some of {list(UNSAFE_CONCEPTS_PARTS)}, got {self.parts}")
        _positive(self, "batch_size", "max_new_tokens")


Recipe = RTVLMRecipe | UnsafeConceptsRecipe


def read_recipe(cls: type[Recipe], path: str | Path | None = None, **overrides: Any) -> Recipe:
    """The recipe at ``path`` (or the defaults when ``None``), with every override that is not ``None`` applied."""
    data: dict[str, Any] = {}
    if path is not None:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"eval recipe not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: an eval recipe is a YAML mapping")
        benchmark = data.pop("benchmark", None)
        if benchmark != cls.benchmark:
            raise ValueError(
                f"{path} is a recipe for benchmark {benchmark!r}, not {cls.benchmark!r} "
                f"(its `benchmark:` key says which)"
            )
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((set(data) | set(overrides)) - known)
    if unknown:
        raise ValueError(f"unknown {cls.benchmark} recipe settings {unknown}; known: {sorted(known)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**data)


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as a YAML-ready dict, ``benchmark`` first (what a run records next to its report)."""
    return {"benchmark": recipe.benchmark, **dataclasses.asdict(recipe)}


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _positive(recipe: Any, *names: str) -> None:
    for name in names:
        value = getattr(recipe, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
