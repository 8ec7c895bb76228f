"""The model card (``README.md``) written next to saved safety modules, from ``model_card.md``.

What the card says comes from the modules' own config (taxonomy, the base's fingerprint, and the known
base that fingerprint matches, the training run's record: data files with their record counts and
held-out metrics, and the calibration temperatures) and from `CardData`, which only the caller can
know: a name, a description, more data or metrics, a license. Nothing is filled in that was not given
or recorded: a missing section says so.
"""

from __future__ import annotations

import string
from dataclasses import field
from pathlib import Path
from typing import Any, Protocol

from pydantic import field_validator
from pydantic.dataclasses import dataclass

from ..errors import ConfigError
from ..safe_files import SETTINGS_CONFIG, Settings, read_json
from .bases import FINGERPRINT_KEYS, matching_bases

TEMPLATE_PATH = Path(__file__).parent / "model_card.md"
CARD_NAME = "README.md"


class CardConfig(Protocol):
    """What the card reads of a modules config (`modeling.SafetyConfig`); a protocol, so that this package
    stays below `modeling/`, which writes the card when it saves."""

    base_fingerprint: dict[str, Any] | None
    level_names: list[str]
    type_names: list[str]
    safe_type: str
    level_temperature: float | list[float] | None
    type_temperature: float | list[float] | None
    training: dict[str, Any] | None


@dataclass(config=SETTINGS_CONFIG)
class CardData(Settings):
    """What the caller tells the card. ``metrics`` may be a dict or the path of a JSON file (``metrics.json``)."""

    KIND = "model-card"

    name: str | None = None
    description: str | None = None
    base_model: str | None = None  # default: the known base whose fingerprint the modules record
    repo_id: str | None = None  # where the modules are published (used in the example code)
    license: str | None = None
    training_data: list[str] = field(default_factory=list)
    metrics: dict[str, Any] | str | None = None
    tags: list[str] = field(default_factory=list)

    @field_validator("training_data", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


def as_card_data(card: CardData | dict[str, Any] | None) -> CardData:
    """``None``, a dict or a `CardData` -> `CardData` (unknown dict keys are an error)."""
    if card is None:
        return CardData()
    if isinstance(card, CardData):
        return card
    if isinstance(card, dict):
        return CardData.from_dict(card)
    raise TypeError(f"card data is a dict or CardData, got {type(card).__name__}")


def _flat_metrics(metrics: dict[str, Any] | str | None) -> dict[str, Any]:
    if metrics is None:
        return {}
    if isinstance(metrics, str):
        metrics = read_json(metrics, "metrics file for the model card")
    if not isinstance(metrics, dict):
        raise ConfigError(f"card metrics must be a mapping of names to values, got {type(metrics).__name__}")
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in _flat_metrics(value).items()})
        else:
            flat[str(key)] = value
    return flat


def _value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _training_data(given: list[str], training: dict[str, Any]) -> str:
    """The caller's list, then the files the training run read, with their record counts."""
    lines = [f"- {d}" for d in given]
    for key, role in (("train_data", "training"), ("eval_data", "held out (evaluation)")):
        lines += [f"- `{path}`: {count} records, {role}" for path, count in training.get(key, {}).items()]
    if training.get("steps") is not None:
        lines.append(f"\nStage {training.get('stage')}, {training['steps']} optimizer steps.")
    return "\n".join(lines) or "Not given, and the modules record no training run."


def _calibration(config: CardConfig) -> str:
    if config.level_temperature is None and config.type_temperature is None:
        return "Not calibrated: probabilities are the softmax of the raw logits (`safevlm calibrate` fits them)."
    return (
        "Temperature scaling (`safevlm calibrate`): probabilities are softmax(logits / T) with "
        f"T = {config.level_temperature} (level head) and {config.type_temperature} (type head)."
    )


def render_card(config: CardConfig, card: CardData | dict[str, Any] | None = None) -> str:
    """The model card's Markdown for modules with ``config``."""
    data = as_card_data(card)
    fingerprint = config.base_fingerprint or {}
    exact, by_geometry = matching_bases(fingerprint)
    base_id = data.base_model or (exact[0].hub_id if exact else None)
    if data.base_model:
        base = f"`{data.base_model}`"
    elif exact:
        base = " or ".join(f"`{b.hub_id}`" for b in exact) + " (the recorded fingerprint matches these modules')"
    elif by_geometry:
        base = (
            "Not named. The fingerprint has the geometry of "
            + ", ".join(f"`{b.hub_id}`" for b in by_geometry)
            + "; the known-base manifests record no projector digest yet to tell them apart."
        )
    elif fingerprint:
        base = "Not named, and the fingerprint matches no known base (see `safety_modules/checkpoints/bases/`)."
    else:
        base = "Not recorded: these modules were saved before they were attached to a base."
    rows = "\n".join(f"| {k} | {fingerprint.get(k)} |" for k in FINGERPRINT_KEYS)
    training = config.training or {}
    metrics = _flat_metrics({"held-out": training["heldout_metrics"]} if "heldout_metrics" in training else None)
    metrics.update(_flat_metrics(data.metrics))
    front: dict[str, Any] = {
        "library_name": "safety_modules",
        "tags": ["safety", "llava", "vision-language", *data.tags],
    }
    if base_id:
        front["base_model"] = base_id
    if data.license:
        front["license"] = data.license
    import yaml

    values = {
        "front_matter": yaml.safe_dump(front, sort_keys=False).strip(),
        "title": data.name or "Safety modules for LLaVA-1.5",
        "description": f"{data.description.strip()}\n\n" if data.description else "",
        "base": base,
        "fingerprint": "| key | value |\n|---|---|\n" + rows,
        "levels": ", ".join(f"`{n}`" for n in config.level_names),
        "types": ", ".join(f"`{n}`" for n in config.type_names),
        "safe_type": config.safe_type,
        "training_data": _training_data(data.training_data, training),
        "calibration": _calibration(config),
        "metrics": (
            "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {_value(v)} |" for k, v in metrics.items())
            if metrics
            else "Not given."
        ),
        "base_id": base_id or "BASE",
        "modules_id": data.repo_id or "SAFETY_MODULES",
    }
    return string.Template(TEMPLATE_PATH.read_text()).substitute(values)


def write_card(directory: str | Path, config: CardConfig, card: CardData | dict[str, Any] | None = None) -> Path:
    """Write ``README.md`` into ``directory`` and return its path."""
    path = Path(directory) / CARD_NAME
    path.write_text(render_card(config, card))
    return path
