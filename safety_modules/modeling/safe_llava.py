"""`SafeLlava`: a frozen LLaVA-1.5 with safety modules attached.

The vision tower runs once per image; its selected features feed both the frozen
LLaVA projector (image tokens for the LLM) and the safety projector (keys of the
safety head). In the LLM input the image block becomes [safety tokens B; image tokens].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..images import group_identical, group_labels, load_images
from .configuration import SafetyConfig
from .fingerprint import base_fingerprint
from .llava import load_base, select_vision_features
from .llava.conversation import Prompt, chat_text, clean_text
from .safety_modules import SafetyModules
from .scores import SafetyScores

IGNORE_INDEX = -100


@dataclass
class SafeLlavaOutput:
    """What `SafeLlava.forward` returns. ``loss`` = ``lm_loss`` + weight x ``safety_loss`` when labels are given."""

    logits: torch.Tensor
    level_logits: torch.Tensor
    type_logits: torch.Tensor
    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    safety_loss: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None


class SafeLlava(nn.Module):
    """Frozen LLaVA-1.5 base + trainable `SafetyModules`."""

    def __init__(self, base: nn.Module, safety: SafetyModules, processor: Any = None) -> None:
        super().__init__()
        base.eval().requires_grad_(False)
        self.base = base
        self.processor = processor
        fingerprint = base_fingerprint(base.config, base.model.multi_modal_projector)
        if safety.config.base_fingerprint is None:
            safety.config.base_fingerprint = fingerprint
        safety.check_base(fingerprint)
        self.safety = safety.to(device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(
        cls,
        base: str | Path | nn.Module,
        safety: str | Path | SafetyModules | None = None,
        *,
        processor: Any = None,
        dtype: str | torch.dtype | None = "auto",
        device: str | torch.device | None = None,
        seed: int | None = None,
        lora: str | Path | None = None,
        **config_overrides: Any,
    ) -> SafeLlava:
        """Load the base (folder, hub id or an already loaded model) and attach modules.

        ``safety=None`` builds fresh modules sized from the base config (``config_overrides``
        change any `SafetyConfig` field, ``seed`` makes the init reproducible); a path or hub id
        loads saved modules and checks they were made for this base. ``lora``: a stage-2 adapter
        folder to attach to the language model (see `load_lora`).
        """
        if isinstance(base, (str, Path)):
            base, loaded_processor = load_base(base, dtype=dtype, device=device)
            processor = processor or loaded_processor
        if safety is None:
            if seed is not None:
                torch.manual_seed(seed)
            safety = SafetyModules(SafetyConfig.from_llava_config(base.config, **config_overrides))
        elif not isinstance(safety, SafetyModules):
            safety = SafetyModules.from_pretrained(safety)
        model = cls(base, safety, processor)
        if lora is not None:
            model.load_lora(lora)
        return model

    def load_lora(self, adapter_dir: str | Path) -> None:
        """Attach a saved stage-2 LoRA adapter (peft) to the language model, frozen, for inference."""
        from peft import PeftModel

        language_model = self.base.model.language_model
        self.base.model.language_model = PeftModel.from_pretrained(language_model, str(adapter_dir))
        self.base.requires_grad_(False)

    # ------------------------------------------------------------------ properties

    @property
    def config(self) -> SafetyConfig:
        return self.safety.config

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.base.parameters()).dtype

    @property
    def image_token_id(self) -> int:
        return self.base.config.image_token_id

    def train(self, mode: bool = True) -> SafeLlava:
        """Only the safety modules change mode: the frozen base always stays in eval (no dropout)."""
        self.training = mode
        self.safety.train(mode)
        self.base.eval()
        return self

    # ------------------------------------------------------------------ building blocks

    def vision_features(
        self, pixel_values: torch.Tensor, groups: Sequence[int] | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the vision tower once; return the selected layer's patch features (B, N, V).

        ``groups``: optional per-sample group labels (equal labels = identical images); the
        tower then sees one row per group and the features are copied back to every member.
        Without them every row goes through the tower (pixels are never compared here: see
        `encode_images`, which groups images by content before preprocessing).
        """
        if groups is not None:
            firsts, inverse = _grouping(groups, len(pixel_values))
            if len(firsts) < len(pixel_values):
                return self.vision_features(pixel_values[firsts])[inverse]
        cfg = self.base.config
        return select_vision_features(
            self.base.model.vision_tower,
            pixel_values.to(self.device, self.dtype),
            cfg.vision_feature_layer,
            cfg.vision_feature_select_strategy,
        )

    def encode_images(self, images: Any, groups: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Images -> vision features (B, N, V), one preprocessing and one tower pass per distinct image.

        ``images``: PIL images, arrays, file paths (decoded with `decode_image`), or a tensor
        (float: pixel values as the processor makes them; uint8: raw images to preprocess).
        PIL images and arrays are grouped by content on the CPU (`group_identical`); for a
        tensor pass ``groups`` (per-sample labels) to share passes, or every row runs.
        """
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            return self.vision_features(images, groups)
        if isinstance(images, torch.Tensor):
            everyone = list(range(len(images)))
            firsts, inverse = (everyone, everyone) if groups is None else _grouping(groups, len(images))
            distinct = images[firsts]
        else:
            images = load_images(images)
            firsts, inverse = group_identical(images) if groups is None else _grouping(groups, len(images))
            distinct = [images[i] for i in firsts]
        features = self.vision_features(self.pixel_values(distinct))  # preprocessing only for distinct images
        return features if len(firsts) == len(images) else features[inverse]

    def pixel_values(self, images: Any) -> torch.Tensor:
        """Images (PIL, arrays, a uint8 image tensor, or a list of them) -> pixel values via the image processor.

        A float tensor is taken as pixel values already and returned as it is.
        """
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            return images
        if self.processor is None:
            raise ValueError("this SafeLlava has no processor: pass pixel_values instead of images")
        if isinstance(images, torch.Tensor):
            images = list(images.cpu().numpy())  # uint8 rows, channels first or last
        if not isinstance(images, (list, tuple)):
            images = [images]
        return self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    def head_prompt_inputs(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise the users' prompts for the safety head (see `head_prompt_inputs`)."""
        if self.processor is None:
            raise ValueError("this SafeLlava has no processor to tokenise prompts")
        return head_prompt_inputs(self.processor.tokenizer, prompts)

    def classify(
        self,
        features: torch.Tensor,
        head_input_ids: torch.Tensor | None = None,
        head_attention_mask: torch.Tensor | None = None,
    ) -> SafetyScores:
        """Safety-head scores (raw logits, calibrated probabilities) from vision features and optional prompt ids."""
        prompt_embeds = None
        if head_input_ids is not None:
            head_input_ids = head_input_ids.to(self.device)
            prompt_embeds = self.base.get_input_embeddings()(head_input_ids)
            if head_attention_mask is not None:
                head_attention_mask = head_attention_mask.to(self.device)
        return self.safety.score(features, prompt_embeds, head_attention_mask)

    def build_inputs_embeds(
        self,
        input_ids: torch.Tensor,
        image_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inject_safety_tokens: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """LLM input embeddings with each sample's image block replaced by [tokens B; image tokens].

        ``input_ids`` hold the processor's expanded ``<image>`` run (one image per sample).
        Returns (inputs_embeds, attention_mask, labels), grown by the safety-token count;
        labels are -100 on the safety and image positions.
        """
        input_ids = input_ids.to(self.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(self.device)
        embeds = self.base.get_input_embeddings()(input_ids)
        image_features = image_features.to(embeds.dtype)
        n_image = image_features.shape[1]
        is_image = input_ids == self.image_token_id
        counts = is_image.sum(1)
        if not torch.all(counts == n_image):
            raise ValueError(
                f"each sample needs exactly one image ({n_image} <image> tokens as the processor expands them); "
                f"got counts {counts.tolist()}"
            )
        starts = is_image.int().argmax(1).tolist()
        prefix = self.safety.llm_tokens[0].to(embeds.dtype) if inject_safety_tokens else embeds[:0, 0]
        n_prefix = prefix.shape[0]
        rows, masks, label_rows = [], [], []
        for b, start in enumerate(starts):
            end = start + n_image
            rows.append(torch.cat([embeds[b, :start], prefix, image_features[b], embeds[b, end:]]))
            masks.append(
                torch.cat(
                    [attention_mask[b, :start], attention_mask.new_ones(n_prefix + n_image), attention_mask[b, end:]]
                )
            )
            if labels is not None:
                lab = labels[b].to(self.device)
                label_rows.append(
                    torch.cat([lab[:start], lab.new_full((n_prefix + n_image,), IGNORE_INDEX), lab[end:]])
                )
        out_labels = torch.stack(label_rows) if labels is not None else None
        return torch.stack(rows), torch.stack(masks), out_labels

    # ------------------------------------------------------------------ forward / assess

    def prompt_embeds(
        self,
        features: torch.Tensor,
        prompts: Sequence[Prompt],
        hints: Sequence[str | None] | None = None,
        inject_safety_tokens: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LLM input for answering: each question (and hint) in the chat format, left-padded, with its image
        block from ``features`` (one row per prompt). Returns (inputs_embeds, attention_mask); the gate's
        generation and the RL rollouts both start here."""
        processor = self.processor
        n_image = features.shape[1]
        hints = hints if hints is not None else [None] * len(prompts)
        # The same expansion the processor does: one <image> placeholder per image token.
        texts = [
            chat_text(processor, p, h).replace(processor.image_token, processor.image_token * n_image)
            for p, h in zip(prompts, hints)
        ]
        enc = processor.tokenizer(texts, padding="longest", padding_side="left", return_tensors="pt")
        image_tokens = self.base.model.multi_modal_projector(features)
        embeds, mask, _ = self.build_inputs_embeds(
            enc["input_ids"], image_tokens, enc["attention_mask"], inject_safety_tokens=inject_safety_tokens
        )
        return embeds, mask

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        head_input_ids: torch.Tensor | None = None,
        head_attention_mask: torch.Tensor | None = None,
        safety_levels: torch.Tensor | None = None,
        safety_types: torch.Tensor | None = None,
        inject_safety_tokens: bool = True,
    ) -> SafeLlavaOutput:
        """One vision pass -> safety head + LLM. Labels are unshifted token ids (-100 = ignore)."""
        features = self.vision_features(pixel_values)
        scores = self.classify(features, head_input_ids, head_attention_mask)
        image_tokens = self.base.model.multi_modal_projector(features)
        embeds, mask, labels = self.build_inputs_embeds(
            input_ids, image_tokens, attention_mask, labels, inject_safety_tokens
        )
        logits = self.base(inputs_embeds=embeds, attention_mask=mask).logits
        out = SafeLlavaOutput(
            logits=logits,
            level_logits=scores.level_logits,
            type_logits=scores.type_logits,
            attention_mask=mask,
            labels=labels,
        )
        losses = []
        if labels is not None:
            out.lm_loss = lm_loss(logits, labels)
            losses.append(out.lm_loss)
        if safety_levels is not None and safety_types is not None:
            out.safety_loss = F.cross_entropy(
                scores.level_logits.float(), safety_levels.to(self.device)
            ) + F.cross_entropy(scores.type_logits.float(), safety_types.to(self.device))
            losses.append(self.config.safety_loss_weight * out.safety_loss)
        if losses:
            out.loss = sum(losses)
        return out

    @torch.no_grad()
    def assess(
        self,
        images: Any = None,
        prompts: Sequence[str] | None = None,
        pixel_values: torch.Tensor | None = None,
        groups: Sequence[int] | torch.Tensor | None = None,
    ) -> SafetyScores:
        """Level and type scores for images (and optionally their prompts), without the language model.

        Identical images take one vision pass (see `encode_images`; ``groups`` as there).
        """
        if pixel_values is None:
            if images is None:
                raise ValueError("assess needs images or pixel_values")
            pixel_values = images
        features = self.encode_images(pixel_values, groups)
        ids = mask = None
        if prompts is not None:
            if len(prompts) != features.shape[0]:
                raise ValueError(f"{len(prompts)} prompts for {features.shape[0]} images")
            ids, mask = self.head_prompt_inputs(prompts)
        return self.classify(features, ids, mask)


def head_prompt_inputs(tokenizer: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The users' prompts as the safety head reads them: (ids, mask), right-padded, no special tokens.

    Training (the collator) and inference both tokenise through this function, so the head
    sees a prompt the same way in both (surrounding whitespace dropped, as `conversation.clean_text` does).
    """
    enc = tokenizer(
        [clean_text(p) for p in prompts],
        add_special_tokens=False,
        padding="longest",
        return_tensors="pt",
        padding_side="right",
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    # Empty prompts only would leave no prompt key at all; keep the shape valid with one masked position
    # (the image keys are always there).
    if ids.shape[1] == 0:
        ids = torch.full((len(prompts), 1), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
    return ids, mask


def _grouping(groups: Sequence[int] | torch.Tensor, batch: int) -> tuple[list[int], list[int]]:
    """(firsts, inverse) from caller-given group labels, checked against the batch size."""
    labels = groups.tolist() if isinstance(groups, torch.Tensor) else list(groups)
    if len(labels) != batch:
        raise ValueError(f"{len(labels)} group labels for {batch} images")
    return group_labels(labels)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts labels[t + 1]; -100 positions are ignored."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(logits.device)
    if not torch.any(shift_labels != IGNORE_INDEX):
        return shift_logits.sum() * 0.0
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX
    )
