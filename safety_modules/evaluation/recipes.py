"""Eval recipes: the settings of a benchmark run, read from YAML (``eval/*.yaml``) the way ``train/`` recipes are.

Every recipe key has a command-line flag of the same name (``judge_model`` <-> ``--judge-model``);
a flag that is given wins over the recipe, and a key that neither gives takes the default below
(the defaults are the command's behaviour without a recipe). Paths are relative to the folder
the command runs in, as in ``train/``.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal, get_args

from pydantic.dataclasses import dataclass

from ..errors import ConfigError
from ..safe_files import SETTINGS_CONFIG, Settings

Split = Literal["all", "train", "test"]
Judge = Literal["api", "rules"]  # api: an OpenAI-compatible endpoint; rules: the APPROXIMATE offline judge
Part = Literal["perception", "alignment", "text_only"]
RTVLM_SPLITS: tuple[str, ...] = get_args(Split)
JUDGES: tuple[str, ...] = get_args(Judge)
UNSAFE_CONCEPTS_PARTS: tuple[str, ...] = get_args(Part)


@dataclass(config=SETTINGS_CONFIG)
class RTVLMRecipe(Settings):
    """How RTVLM is run: the judge and its prompts, the gate policy, generation, the items."""

    KIND = "rtvlm recipe"
    TAG = ("benchmark", "rtvlm")

    judge: Judge = "api"
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
    split: Split = "all"
    seed: int = 0
    train_fraction: float = 0.8
    subtasks: list[str] | None = None
    limit_per_subtask: int | None = None

    def __post_init__(self) -> None:
        _positive(self, "batch_size", "max_new_tokens", "judge_max_tokens", "judge_concurrency")
        for name in ("judge_timeout", "judge_deadline"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if not 0 < self.train_fraction < 1:
            raise ConfigError(f"train_fraction must be between 0 and 1, got {self.train_fraction}")
        if self.judge_temperature < 0:
            raise ConfigError(f"judge_temperature must be >= 0, got {self.judge_temperature}")


@dataclass(config=SETTINGS_CONFIG)
class UnsafeConceptsRecipe(Settings):
    """How UnsafeConcepts is run: parts, the response parser (rules or the published classifiers), generation."""

    KIND = "unsafe_concepts recipe"
    TAG = ("benchmark", "unsafe_concepts")

    parts: list[Part] = field(default_factory=lambda: list(UNSAFE_CONCEPTS_PARTS))
    limit_per_category: int | None = None
    policy: str = "default"
    batch_size: int = 8
    max_new_tokens: int = 512
    perception_metadata: str | None = None  # default: beside the data
    classifier_encoder: str | None = None  # local RoBERTa folder; with the two classifiers below
    perception_classifier: str | None = None  # None for both: the APPROXIMATE rule parser
    alignment_classifier: str | None = None

    def __post_init__(self) -> None:
        if not self.parts:
            raise ConfigError(f"parts must be some of {list(UNSAFE_CONCEPTS_PARTS)}, got none")
        _positive(self, "batch_size", "max_new_tokens")


EvalRecipe = RTVLMRecipe | UnsafeConceptsRecipe


def _positive(recipe: Any, *names: str) -> None:
    for name in names:
        value = getattr(recipe, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
