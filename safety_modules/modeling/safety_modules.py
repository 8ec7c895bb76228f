"""`SafetyModules`: the safety projector, two safety-token sets and the safety head, saved as one folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoints import CARD_NAME, CardData, name_base, upload_folder, write_card
from ..checkpoints.card import as_card_data
from ..errors import ModelError
from .configuration import SafetyConfig
from .fingerprint import describe
from .head import SafetyHead
from .projector import SafetyProjector
from .scores import SafetyScores

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# What a published modules folder holds: the two files `from_pretrained` reads and the model card.
PUBLISHED_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)


class IncompatibleBaseError(ModelError):
    """Safety modules were trained for another base model than the one they are attached to."""


class CheckpointError(ModelError):
    """A safety-modules folder is missing files or holds tensors that do not fit the config."""


class SafetyModules(nn.Module):
    """The trainable safety part that attaches to a frozen LLaVA.

    - ``projector``: C-Abstractor over the vision features (B, N, V) -> (B, N, D)
    - ``head_tokens`` (set A, (1, 64, D)): prefix of the safety head's keys/values
    - ``llm_tokens`` (set B, (1, 64, D)): inserted before the image tokens in the LLM input
    - ``head``: learned-query attention pool -> level and type logits
    """

    def __init__(self, config: SafetyConfig) -> None:
        super().__init__()
        self.config = config
        width = config.text_hidden_size
        self.projector = SafetyProjector(
            vision_width=config.vision_hidden_size,
            hidden_width=config.projector_hidden_size,
            output_width=width,
            grid_size=config.grid_size,
            depth=config.projector_depth,
            se_ratio=config.projector_se_ratio,
        )
        self.head_tokens = nn.Parameter(torch.randn(1, config.num_head_tokens, width) * config.token_init_std)
        self.llm_tokens = nn.Parameter(torch.randn(1, config.num_llm_tokens, width) * config.token_init_std)
        self.head = SafetyHead(width, config.head_num_heads, config.num_levels, config.num_types, config.token_init_std)

    @property
    def dtype(self) -> torch.dtype:
        return self.head_tokens.dtype

    @property
    def device(self) -> torch.device:
        return self.head_tokens.device

    def score(
        self,
        vision_features: torch.Tensor,
        prompt_embeds: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
    ) -> SafetyScores:
        """Level and type scores from selected vision features (B, N, V) and optional prompt embeddings:
        the raw logits with this head's temperatures (so the probabilities are calibrated when it has them)."""
        safety_features = self.projector(vision_features.to(self.dtype))
        head_tokens = self.head_tokens.expand(safety_features.shape[0], -1, -1)
        if not self.config.head_uses_prompt:
            prompt_embeds = prompt_mask = None
        level, type_ = self.head(head_tokens, safety_features, prompt_embeds, prompt_mask)
        return SafetyScores(level, type_, self.config.level_temperature, self.config.type_temperature)

    def check_base(self, fingerprint: dict[str, Any]) -> None:
        """Raise `IncompatibleBaseError` unless ``fingerprint`` is the base these modules were made for."""
        expected = self.config.base_fingerprint
        if expected is None:
            return
        if expected != fingerprint:
            made_for, given = name_base(expected), name_base(fingerprint)
            raise IncompatibleBaseError(
                "these safety modules were trained for another base model"
                + (f": they were made for {made_for}" if made_for else "")
                + ".\n"
                f"  modules expect: {describe(expected)}\n"
                f"  base provides:  {describe(fingerprint)}" + (f" ({given})" if given else "")
            )

    def save_pretrained(
        self, directory: str | Path, card_data: CardData | dict[str, Any] | None = None, write_card_file: bool = True
    ) -> Path:
        """Write ``config.json``, ``model.safetensors`` and the model card ``README.md`` into ``directory``.

        ``card_data`` (a `CardData` or a dict of its fields: name, training_data, metrics, license, ...)
        fills the parts of the card the modules cannot know; ``write_card_file=False`` skips the card.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_NAME)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "library": "safety_modules"})
        if write_card_file:
            write_card(directory, self.config, card_data)
        return directory

    def push_to_hub(
        self,
        repo_id: str,
        card_data: CardData | dict[str, Any] | None = None,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload safety modules",
    ) -> str:
        """Save to a fresh folder (modules + card) and upload it to ``repo_id``; returns the commit URL.

        The upload is ``huggingface_hub``'s (``create_repo`` + ``upload_folder``); the card's example code
        names ``repo_id`` unless ``card_data`` gives another.
        """
        import tempfile

        card = as_card_data(card_data)
        card = dataclasses.replace(card, repo_id=card.repo_id or repo_id)
        with tempfile.TemporaryDirectory(prefix="safety-modules-") as folder:
            self.save_pretrained(folder, card)
            return upload_folder(folder, repo_id, private=private, token=token, commit_message=commit_message)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> SafetyModules:
        """Load from a local folder or a Hugging Face hub id (``config.json`` + ``model.safetensors``)."""
        config_file, weights_file = checkpoint_files(name_or_path)
        config = SafetyConfig.load(config_file)
        with torch.device("meta"):
            modules = cls(config)
        state = load_file(str(weights_file), device="cpu")
        expected = modules.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong_shape = sorted(
            f"{k}: file {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
            for k in set(state) & set(expected)
            if state[k].shape != expected[k].shape
        )
        if missing or unexpected or wrong_shape:
            parts = []
            if missing:
                parts.append(f"missing tensors: {missing}")
            if unexpected:
                parts.append(f"unexpected tensors: {unexpected}")
            if wrong_shape:
                parts.append(f"shape mismatches: {wrong_shape}")
            raise CheckpointError(f"safety modules at {weights_file} do not match their config; " + "; ".join(parts))
        modules.load_state_dict(state, strict=True, assign=True)
        return modules.to(device=device, dtype=dtype)


def checkpoint_files(name_or_path: str | Path) -> tuple[Path, Path]:
    """The (config.json, model.safetensors) of a safety-modules folder or hub id; a clear error if either is missing."""
    path = Path(name_or_path)
    if path.is_dir():
        files = path / CONFIG_NAME, path / WEIGHTS_NAME
    elif path.exists() or str(name_or_path).startswith((".", "/")) or str(name_or_path).count("/") != 1:
        raise CheckpointError(f"safety modules folder not found: {name_or_path}")
    else:
        from huggingface_hub import hf_hub_download

        files = (
            Path(hf_hub_download(str(name_or_path), CONFIG_NAME)),
            Path(hf_hub_download(str(name_or_path), WEIGHTS_NAME)),
        )
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"safety modules folder {name_or_path} has no {file.name}")
    return files
