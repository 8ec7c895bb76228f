"""Answer diversity as the paper reports it: 1 - Self-BLEU (BLEU-4, uniform weights, NLTK's smoothing method 1).

Self-BLEU of a set of answers = the mean, over answers, of the BLEU of that answer against all the
others as references. Written here (NLTK is not a dependency); the formula is NLTK's
``sentence_bleu`` with ``SmoothingFunction().method1`` (a zero n-gram match count becomes 0.1).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(
    hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4, epsilon: float = 0.1
) -> float:
    """BLEU of one tokenised hypothesis against tokenised references (clipped n-gram precisions,
    geometric mean with weights 1/max_n, brevity penalty against the closest reference length)."""
    if not hypothesis or not references:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        counts = _ngrams(hypothesis, n)
        total = sum(counts.values())
        if total == 0:
            return 0.0  # NLTK: a hypothesis shorter than n has BLEU 0
        best: Counter = Counter()
        for ref in references:
            best |= _ngrams(ref, n)
        matched = sum(min(c, best[g]) for g, c in counts.items())
        log_sum += math.log((matched if matched else epsilon) / total) / max_n
    closest = min((len(r) for r in references), key=lambda length: (abs(length - len(hypothesis)), length))
    brevity = 1.0 if len(hypothesis) > closest else math.exp(1 - closest / len(hypothesis))
    return brevity * math.exp(log_sum)


def self_bleu(texts: Sequence[str]) -> float | None:
    """Mean BLEU-4 of each text against all the others (whitespace tokens, lowercased); None for < 2 texts."""
    tokens = [t.lower().split() for t in texts]
    if len(tokens) < 2:
        return None
    scores = [sentence_bleu(tokens[i], tokens[:i] + tokens[i + 1 :]) for i in range(len(tokens))]
    return sum(scores) / len(scores)


def diversity(texts: Sequence[str]) -> float | None:
    """1 - Self-BLEU: 0 when every answer is the same, near 1 when they share no 4-grams."""
    value = self_bleu(texts)
    return None if value is None else 1.0 - value
