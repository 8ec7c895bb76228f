"""Fixtures shared by the scan tests."""

from __future__ import annotations

import pytest

from ..scan_corpus import save_safety


@pytest.fixture(scope="module")
def safety_dir(tiny_dir, tmp_path_factory):
    """Seeded safety modules for the tiny base (`scan_corpus.save_safety`)."""
    return save_safety(tiny_dir, tmp_path_factory.mktemp("safety"))
