"""Fixtures of the RL tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def classifier_dir(tmp_path_factory):
    """A real (randomly initialised) RoBERTa sequence classifier with labels Safe/Unsafe/NA, saved as safetensors."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from safety_modules.testing.tiny import build_tokenizer

    out = tmp_path_factory.mktemp("classifier")
    tokenizer = build_tokenizer(llava_tokens=True)
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=tokenizer.pad_token_id + 130,
        pad_token_id=tokenizer.pad_token_id,
        id2label={0: "Safe", 1: "Unsafe", 2: "NA"},
        label2id={"Safe": 0, "Unsafe": 1, "NA": 2},
    )
    RobertaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
