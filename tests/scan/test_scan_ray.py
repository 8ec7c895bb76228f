"""``--engine ray`` on a local Ray gives the same rows and scores as the local engine."""

from __future__ import annotations

import numpy as np
import pytest

from safety_modules.scan import ScanSettings, read_parts, run_scan

from ..scan_corpus import broken_images, plain_images, save_safety, unusual_images, write_folder


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_engine_matches_local_engine(tiny_dir, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    from safety_modules.scan import ray_engine

    # 11 items, parts of 4, batches of 3: batches 3+1 | 3+1 | 3; windows of 3 batches split part 1 in two.
    monkeypatch.setattr(ray_engine, "WINDOW_BATCHES", 3)

    safety_dir = save_safety(tiny_dir, tmp_path / "safety")
    files = {
        **plain_images(5),
        **dict(list(unusual_images().items())[:3]),
        **{k: v for k, (v, _) in broken_images().items() if k != "bomb.png"},
    }
    corpus = write_folder(tmp_path / "corpus", files)

    def scan(engine: str, out: str):
        settings = ScanSettings(
            base=str(tiny_dir), safety=str(safety_dir), engine=engine, part_size=4, batch_size=3, workers=0
        )
        return run_scan(corpus, tmp_path / out, settings, progress=False)

    local = scan("local", "local")
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # a Ray of its own, never another on the machine
    try:
        distributed = scan("ray", "ray")
    finally:
        ray.shutdown()

    a, b = read_parts(tmp_path / "local"), read_parts(tmp_path / "ray")
    assert a.schema == b.schema

    def part_names(out: str) -> list[str]:
        return sorted(p.name for p in (tmp_path / out).glob("part-*"))

    assert (
        part_names("ray")
        == part_names("local")
        == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    )
    for column in ("index", "id", "source", "error", "error_kind", "level", "type", "flagged"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist(), column
    probs = [c for c in a.column_names if c.startswith("p_")]
    for column in probs:
        x = np.array(a.column(column).to_pylist(), dtype=float)
        y = np.array(b.column(column).to_pylist(), dtype=float)
        np.testing.assert_allclose(x, y, atol=1e-5, equal_nan=True)
    assert np.isfinite(np.array(a.column("p_safe").to_pylist(), dtype=float)).sum() == 8  # scored rows compared
    assert distributed["counts"] == local["counts"] and distributed["runs"][-1]["engine"] == "ray"
    assert distributed["account"] == local["account"] and distributed["complete"] and local["complete"]
