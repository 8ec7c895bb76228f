"""Original LLaVA checkpoints (``liuhaotian/llava-v1.5-7b`` layout), converted to the HF layout at load time.

An original checkpoint is ``LlavaLlamaForCausalLM`` with ``model.mm_projector.{0,2}`` and a
vision tower named by ``mm_vision_tower``. transformers reads it shard by shard, renaming the keys
with `ORIGINAL_KEY_MAP` (the key map of transformers' LLaVA conversion script, and the one map the
vision-only loader uses too); ``<image>`` and ``<pad>`` are added to the tokenizer and the embeddings
grow to a multiple of 64 (``resize_token_embeddings``), new rows set to the mean of the old ones.

So that the converted model behaves as the original code does (``llava.model.builder``,
``llava.mm_utils``, ``conv_templates['vicuna_v1']``):

- the tokenizer is built from ``tokenizer.model`` with LLaMA's legacy sentencepiece behaviour
  (a ``▁`` is prepended to every piece of text between special tokens, as the slow
  ``LlamaTokenizer`` did and ``tokenizer_image_token`` relies on);
- images are padded to a square with the mean colour before resizing when the checkpoint says
  ``image_aspect_ratio: pad`` (``LlavaImageProcessor(do_pad=True)``, which is llava's ``expand2square``);
- the processor's chat template is the ``vicuna_v1`` conversation with its system prompt
  (`safety_modules.modeling.llava.conversation.VICUNA_V1`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelError
from .common import check_weight_files, local_folder
from .conversation import IMAGE_TOKEN, VICUNA_V1

_VOCAB_MULTIPLE = 64

# Original LLaVA key -> transformers 5 ``LlavaForConditionalGeneration`` key, as ``from_pretrained``'s
# ``key_mapping`` takes it: every matching rule applies, in this order (``lm_head.*`` stays as it is;
# transformers 5's CLIPVisionModel has no inner ``vision_model`` level).
ORIGINAL_KEY_MAP = {
    r"^model\.mm_projector\.0\.": "model.multi_modal_projector.linear_1.",
    r"^model\.mm_projector\.2\.": "model.multi_modal_projector.linear_2.",
    r"^model\.vision_tower\.vision_tower\.(vision_model\.)?": "model.vision_tower.",
    r"^model\.(?!multi_modal_projector\.|vision_tower\.|language_model\.)": "model.language_model.",
}
# Buffers that old checkpoints saved and transformers recomputes.
_IGNORED_KEYS = re.compile(r"rotary_emb\.inv_freq$")


def convert_original_key(key: str) -> str:
    """An original LLaVA state-dict key as `ORIGINAL_KEY_MAP` renames it (what ``from_pretrained`` does)."""
    for pattern, replacement in ORIGINAL_KEY_MAP.items():
        key = re.sub(pattern, replacement, key, count=1)
    if not key.startswith(("model.", "lm_head.")):
        raise KeyError(f"unexpected key in original LLaVA checkpoint: {key}")
    return key


def resolve_vision_tower(folder: Path, name: str) -> Path:
    """The folder of the CLIP tower named by ``mm_vision_tower`` (absolute, relative to the checkpoint, or hub id)."""
    found = next((c for c in (Path(name), folder / name) if c.is_dir()), None) or local_folder(name)
    check_weight_files(found)
    return found


def grow_vocabulary(model: Any, size: int) -> None:
    """Grow the input and output embeddings to ``size`` rounded up to a multiple of 64, new rows = the mean row.

    ``resize_token_embeddings`` does the growing. Its ``mean_resizing`` would draw the new rows from a normal
    around that mean (from the global RNG, after an eigendecomposition of the hidden-size covariance); the
    mean itself is what the new tokens (``<image>``, replaced by image features, and ``<pad>``, masked) get
    here: deterministic, and what the oracle tests compare against.
    """
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(size, pad_to_multiple_of=_VOCAB_MULTIPLE, mean_resizing=False)
    with torch.no_grad():
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            weight = layer.weight
            weight[old:] = weight[:old].float().mean(0, keepdim=True).to(weight.dtype)


def llama_tokenizer(model_file: str | Path):
    """A fast tokenizer equal to LLaMA's legacy sentencepiece tokenizer read from ``tokenizer.model``.

    Vocabulary and merges come from the sentencepiece model; ``▁`` is prepended to each piece of
    text between special tokens and spaces become ``▁`` (sentencepiece's ``add_dummy_prefix`` with
    no whitespace folding, as LLaMA's model is configured); bytes fall back to ``<0xNN>``; BOS is
    added. This is the layout of llava-hf's ``tokenizer.json``; `tests/fidelity` checks the ids
    against sentencepiece itself through llava's ``tokenizer_image_token``.
    """
    try:
        from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor
    except ImportError as exc:  # pragma: no cover - sentencepiece is an install requirement
        raise ImportError(f"reading {model_file} needs the sentencepiece package: {exc}") from None
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    extractor = SentencePieceExtractor(str(model_file))
    vocab, _, merges = extractor.extract()
    sp = extractor.sp
    unk, bos, eos = (sp.id_to_piece(i) for i in (sp.unk_id(), sp.bos_id(), sp.eos_id()))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, sp.bos_id())]
    )
    tok.add_special_tokens([unk, bos, eos])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk)


def original_tokenizer(folder: Path):
    """The checkpoint's tokenizer with ``<image>`` and ``<pad>`` added, left padding (for batched generation)."""
    from transformers import AddedToken, AutoTokenizer

    model_file = folder / "tokenizer.model"
    tokenizer = llama_tokenizer(model_file) if model_file.is_file() else AutoTokenizer.from_pretrained(folder)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens(AddedToken(IMAGE_TOKEN, special=True, normalized=False), special_tokens=True)
    if "<pad>" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.pad_token = "<pad>"
    tokenizer.padding_side = "left"
    return tokenizer


def original_llava_config(folder: Path, config: dict[str, Any]):
    """The `LlavaConfig`, tokenizer (with ``<image>``/``<pad>``) and vision-tower folder of an original checkpoint."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    projector_type = config.get("mm_projector_type", "linear")
    if projector_type != "mlp2x_gelu":
        raise ModelError(
            f"only LLaVA-1.5 checkpoints (mm_projector_type 'mlp2x_gelu') are supported, got {projector_type!r}"
        )
    vt_folder = resolve_vision_tower(folder, config["mm_vision_tower"])
    vision_config: Any = CLIPVisionConfig.from_pretrained(vt_folder)
    tokenizer = original_tokenizer(folder)

    # The checkpoint's own vocabulary (and its pad id, if any, inside it): `load_original` grows the vocabulary
    # for the added tokens after loading and then sets the pad id to ``<pad>``'s.
    text_fields = {
        k: v for k, v in config.items() if not k.startswith("mm_") and k not in ("architectures", "model_type")
    }
    text_config = LlamaConfig(**text_fields)
    select = config.get("mm_vision_select_feature", "patch")
    settings: dict[str, Any] = dict(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        pad_token_id=tokenizer.pad_token_id,
        vision_feature_layer=config.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default" if select == "patch" else "full",
        projector_hidden_act="gelu",
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
    )
    llava_config = LlavaConfig(**settings)
    return llava_config, tokenizer, vt_folder


def original_image_processor(vt_folder: Path, config: dict[str, Any]):
    """The tower's CLIP preprocessing, padded to a square first when ``image_aspect_ratio`` is ``pad``."""
    from transformers import AutoImageProcessor
    from transformers.models.llava.image_processing_pil_llava import (
        LlavaImageProcessorPil,
    )

    aspect = config.get("image_aspect_ratio") or "square"
    clip = AutoImageProcessor.from_pretrained(vt_folder)
    if aspect == "square":  # llava's process_images: the image processor as it is
        return clip
    if aspect != "pad":
        raise ModelError(
            f"image_aspect_ratio {aspect!r} is not LLaVA-1.5's ('pad' or unset); "
            "LLaVA-NeXT 'anyres' checkpoints are not supported"
        )
    settings = {
        key: getattr(clip, key)
        for key in (
            "size",
            "crop_size",
            "resample",
            "image_mean",
            "image_std",
            "rescale_factor",
            "do_resize",
            "do_center_crop",
            "do_rescale",
            "do_normalize",
            "do_convert_rgb",
        )
    }
    return LlavaImageProcessorPil(**settings, do_pad=True)


def load_original(folder: Path, config: dict[str, Any], dtype: torch.dtype):
    """An original checkpoint as ``(LlavaForConditionalGeneration, LlavaProcessor)``, behaving as the original code."""
    from transformers import (
        CLIPVisionModel,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    llava_config, tokenizer, vt_folder = original_llava_config(folder, config)
    # Weights missing from the checkpoint (the tower, usually) are initialised before they are loaded below:
    # on a forked CPU generator, so that loading a base never moves the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        loaded: Any = LlavaForConditionalGeneration.from_pretrained(
            folder, config=llava_config, key_mapping=ORIGINAL_KEY_MAP, dtype=dtype, output_loading_info=True
        )
        model, info = loaded
        missing = set(info.get("missing_keys") or [])
        tower_missing = {k for k in missing if k.startswith("model.vision_tower.")}
        if tower_missing and tower_missing == {"model.vision_tower." + k for k in _tower(model).state_dict()}:
            # the usual case: original checkpoints name their CLIP tower instead of holding it
            _tower(model).load_state_dict(CLIPVisionModel.from_pretrained(vt_folder, dtype=dtype).state_dict())
            missing -= tower_missing
        unexpected = [k for k in info.get("unexpected_keys") or [] if not _IGNORED_KEYS.search(k)]
        if missing or unexpected or info.get("mismatched_keys"):
            # Missing weights would be silently random-initialised: refuse instead.
            raise ModelError(
                f"original LLaVA checkpoint {folder} does not convert cleanly: missing {sorted(missing)[:10]}, "
                f"unexpected {sorted(unexpected)[:10]}, mismatched {list(info.get('mismatched_keys') or [])[:10]}"
            )
        grow_vocabulary(model, len(tokenizer))
    model.config.text_config.pad_token_id = tokenizer.pad_token_id

    processor = LlavaProcessor(
        image_processor=original_image_processor(vt_folder, config),
        tokenizer=tokenizer,
        patch_size=llava_config.vision_config.patch_size,
        vision_feature_select_strategy=llava_config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template=VICUNA_V1.chat_template(),
    )
    return model, processor


def _tower(model: Any) -> torch.nn.Module:
    return model.get_encoder(modality="image")
