"""Rewards: the rule judge, the classifier judge (a real saved sequence classifier), normalisation and shaping."""

from __future__ import annotations

import pytest
import torch

from safety_modules.training.rl.rewards import (
    ClassifierJudge,
    JudgedAnswers,
    RulesJudge,
    make_judge,
    min_max_normalise,
    shape_rewards,
)


def test_min_max_normalisation():
    valid = torch.ones(3, dtype=torch.bool)
    assert min_max_normalise(torch.tensor([1.0, 3.0, 2.0]), valid).tolist() == pytest.approx([0.0, 1.0, 0.5])


def test_all_equal_batch_gives_zeros():
    out = min_max_normalise(torch.tensor([2.0, 2.0, 2.0]), torch.ones(3, dtype=torch.bool))
    assert out.tolist() == [0.0, 0.0, 0.0] and torch.isfinite(out).all()
    assert min_max_normalise(torch.tensor([1.0, 2.0]), torch.zeros(2, dtype=torch.bool)).tolist() == [0.0, 0.0]


def test_na_answers_are_masked():
    # the NA answer's raw 5.0 would otherwise stretch the range: it is left out of min/max and gets 0
    judged = JudgedAnswers(torch.tensor([0.0, 1.0, 5.0]), torch.tensor([True, True, False]))
    shaped = shape_rewards(judged, torch.tensor([1, 1, 1]), torch.ones(3, dtype=torch.bool), 4)
    assert shaped.tolist() == pytest.approx([0.0, 1.0, 0.0])
    unmasked = shape_rewards(judged, torch.tensor([1, 1, 1]), torch.ones(3, dtype=torch.bool), 4, mask_na=False)
    assert unmasked.tolist() == pytest.approx([0.0, 0.2, 1.0])


def test_shaping_terms():
    # lengths 2 and 4 of max 8 with bonus 4 -> +1 and +2; the second never stopped -> -8
    judged = JudgedAnswers(torch.tensor([1.0, 0.0]), torch.tensor([True, True]))
    shaped = shape_rewards(
        judged, torch.tensor([2, 4]), torch.tensor([True, False]), 8, length_bonus=4.0, stop_penalty=-8.0
    )
    assert shaped.tolist() == pytest.approx([1.0 + 1.0, 0.0 + 2.0 - 8.0])


def test_rules_judge():
    judged = RulesJudge()(
        ["No, it is not safe for social media.", "Yes, it is fine.", "I cannot tell."], ["Unsafe", "Unsafe", "Safe"]
    )
    assert judged.raw.tolist() == [1.0, 0.0, 0.0]
    assert judged.valid.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="Safe or Unsafe"):
        RulesJudge()(["Yes"], ["safe"])


def test_classifier_judge_is_minus_cross_entropy(classifier_dir):
    judge = make_judge("classifier", str(classifier_dir))
    answers = ["No, it is harmful.", "Yes, it is safe to share.", "The image shows a cat."]
    labels = ["Unsafe", "Safe", "Unsafe"]
    judged = judge(answers, labels)
    logits = judge.logits(answers)
    expected = -torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0, 1]), reduction="none")
    torch.testing.assert_close(judged.raw, expected)
    assert judged.valid.tolist() == (logits.argmax(-1) != 2).tolist()
    assert (judged.raw <= 0).all()


def test_classifier_judge_loads_safetensors_only(classifier_dir, tmp_path):
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(classifier_dir, pickled)
    state = ClassifierJudge(classifier_dir).model.state_dict()
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    with pytest.raises(Exception, match="safetensors|model.safetensors"):
        ClassifierJudge(pickled)


def test_classifier_labels_are_checked(tmp_path, classifier_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(classifier_dir)
    assert config.id2label[0] == "Safe"
    with pytest.raises(ValueError, match="reward_classifier"):
        make_judge("classifier", None)
    with pytest.raises(ValueError, match="rules or classifier"):
        make_judge("roberta")


def test_published_classifier_layout(tmp_path, classifier_dir):
    """RoBERTa encoder folder + a safetensors state dict with a linear head on the first token (SaferVLM's)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    config = RobertaConfig.from_pretrained(classifier_dir)
    torch.manual_seed(1)
    encoder = RobertaModel(config, add_pooling_layer=False)
    head = torch.nn.Linear(config.hidden_size, 3)
    state = {f"module.roberta.{k}": v for k, v in encoder.state_dict().items()}
    state.update({"module.fc.weight": head.weight.detach(), "module.fc.bias": head.bias.detach()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "alignment_classifier.safetensors"))
    weights = tmp_path / "alignment_classifier.safetensors"
    judge = make_judge("classifier", str(classifier_dir), classifier_weights=str(weights))
    answers, labels = ["No, it is harmful.", "Yes."], ["Unsafe", "Safe"]
    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    with torch.no_grad():
        enc = tokenizer(answers, padding=True, padding_side="right", return_tensors="pt")
        logits = head(encoder.eval()(**enc).last_hidden_state[:, 0])
    expected = -torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0]), reduction="none")
    torch.testing.assert_close(judge(answers, labels).raw, expected, atol=1e-5, rtol=1e-5)
    # a state dict without the head is refused rather than used half random
    del state["module.fc.weight"], state["module.fc.bias"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "headless.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        make_judge("classifier", str(classifier_dir), classifier_weights=str(tmp_path / "headless.safetensors"))


def test_alignment_accuracy_strict_and_balanced():
    from safety_modules.training.rl.evaluate import alignment_accuracy

    labels = ["Safe", "Unsafe", "Unsafe", "Unsafe"]
    always_safe = alignment_accuracy(labels, ["Safe"] * 4)  # ignores the image: balanced 0.5 whatever the mix
    assert (always_safe["strict_accuracy"], always_safe["balanced_accuracy"]) == (0.25, 0.5)
    mixed = alignment_accuracy(labels, ["Safe", "Unsafe", "NA", "Safe"])  # NA counts wrong in both
    assert mixed["na"] == 1 and mixed["accuracy"] == pytest.approx(2 / 3)
    assert mixed["strict_accuracy"] == 0.5 and mixed["balanced_accuracy"] == pytest.approx((1 + 1 / 3) / 2)
