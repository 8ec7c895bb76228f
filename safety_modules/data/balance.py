"""Balancing as in the paper's stage 1: keep every risky sample, sample N clean ones with a fixed seed."""

from __future__ import annotations

import random
from typing import Any

from ..taxonomy import SAFE_TYPE


def is_clean(record: dict[str, Any], safe_type: str = SAFE_TYPE) -> bool:
    return record["safety"]["level"] == 0 and record["safety"]["type"] == safe_type


def balance(
    records: list[dict[str, Any]], n_clean: int, seed: int = 42, safe_type: str = SAFE_TYPE
) -> list[dict[str, Any]]:
    """All risky records plus ``n_clean`` clean ones (all of them if fewer), original order kept."""
    clean = [i for i, r in enumerate(records) if is_clean(r, safe_type)]
    keep_clean = set(clean) if len(clean) <= n_clean else set(random.Random(seed).sample(clean, n_clean))
    return [r for i, r in enumerate(records) if i in keep_clean or not is_clean(r, safe_type)]
