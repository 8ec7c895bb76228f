"""1 - Self-BLEU against cases worked out by hand."""

from __future__ import annotations

import math

import pytest

from safety_modules.training.rl.diversity import diversity, self_bleu, sentence_bleu


def test_identical_answers_have_no_diversity():
    assert self_bleu(["No, it is not safe at all."] * 3) == pytest.approx(1.0)
    assert diversity(["No, it is not safe at all."] * 3) == pytest.approx(0.0)


def test_bleu_by_hand():
    # hypothesis "a b c d e" vs reference "a b c d f": precisions 4/5, 3/4, 2/3, 1/2; equal length, no penalty
    expected = math.exp((math.log(4 / 5) + math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2)) / 4)
    assert sentence_bleu("a b c d e".split(), ["a b c d f".split()]) == pytest.approx(expected)
    # method 1: no 4-gram match -> 0.1 / count; "a b c x y" vs "a b c d e": 3/5, 2/4, 1/3, 0.1/2
    smoothed = math.exp((math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3) + math.log(0.1 / 2)) / 4)
    assert sentence_bleu("a b c x y".split(), ["a b c d e".split()]) == pytest.approx(smoothed)
    # brevity: a 4-token hypothesis against a 6-token reference is penalised by exp(1 - 6/4)
    short = sentence_bleu("a b c d".split(), ["a b c d e f".split()])
    assert short == pytest.approx(math.exp(1 - 6 / 4))
    assert sentence_bleu("a b".split(), ["a b".split()]) == 0.0  # shorter than 4 tokens: 0, as NLTK


def test_disjoint_answers_are_diverse():
    texts = ["the cat sat on a mat", "dogs run in parks daily", "rain falls over green hills"]
    assert diversity(texts) > 0.9
    assert diversity(["one answer only"]) is None
