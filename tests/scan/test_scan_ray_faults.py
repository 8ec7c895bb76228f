"""``--engine ray`` under faults, on a local multi-node Ray cluster (`ray.cluster_utils.Cluster`).

A head without CPUs (it holds the driver's objects, runs no task) and worker nodes with one CPU each;
tasks and actors ask for half a CPU (Ray deadlocks on 2 cores if actors take every CPU). A worker node is
SIGKILLed in the middle of a scan; the driver is SIGKILLed in the middle of a scan and started again. Each
time the output must hold every item exactly once, in order, with the scores the local engine gives, and
the manifest must count them right.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from safety_modules.scan import ScanSettings, read_parts, run_scan

from ..scan_corpus import broken_images, plain_images, save_safety, write_folder
from .test_scan_resume import REPO, count_parts, kill_after_new_parts

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20}


@pytest.fixture()
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": 100 * 2**20, "include_dashboard": False},
    )
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def assert_same_as_local(out, reference, items: int) -> None:
    """Every item once, in input order, with the local engine's rows and scores."""
    a, b = read_parts(reference), read_parts(out)
    assert b.column("index").to_pylist() == list(range(items))  # nothing lost, nothing twice
    assert len(set(b.column("id").to_pylist())) == items
    for column in ("index", "id", "source", "error_kind", "level", "type", "flagged"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist(), column
    for column in (c for c in a.column_names if c.startswith("p_")):
        x = np.array(a.column(column).to_pylist(), dtype=float)
        y = np.array(b.column(column).to_pylist(), dtype=float)
        np.testing.assert_allclose(x, y, atol=1e-5, equal_nan=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_worker_node_lost_mid_scan_loses_and_repeats_nothing(tiny_dir, tmp_path, cluster, monkeypatch):
    from safety_modules.scan import ray_engine

    items = 40
    monkeypatch.setattr(ray_engine, "WINDOW_BATCHES", 6)  # several windows: the lost node holds a live one
    safety_dir = save_safety(tiny_dir, tmp_path / "safety")
    files = {**plain_images(items - 2), **{k: v for k, (v, _) in list(broken_images().items())[:2]}}
    corpus = write_folder(tmp_path / "corpus", files)

    def settings(engine: str) -> ScanSettings:
        return ScanSettings(
            base=str(tiny_dir), safety=str(safety_dir), engine=engine, part_size=4, batch_size=2, workers=0
        )

    reference = run_scan(corpus, tmp_path / "local", settings("local"), progress=False)

    doomed = cluster.add_node(**NODE)
    ray.init(address=cluster.address)
    out = tmp_path / "ray"
    outcome: dict = {}

    def scan() -> None:
        try:
            outcome["manifest"] = run_scan(corpus, out, settings("ray"), progress=False)
        except BaseException as exc:  # reported by the test below
            outcome["error"] = exc

    thread = threading.Thread(target=scan, daemon=True)
    thread.start()
    deadline = time.time() + 240
    while count_parts(out) < 2:
        assert thread.is_alive(), f"the scan ended before the node could be lost: {outcome}"
        assert time.time() < deadline, "the scan made no progress"
        time.sleep(0.05)
    cluster.add_node(**NODE)  # where the work goes on
    cluster.remove_node(doomed, allow_graceful=False)  # SIGKILL: its actor, its tasks, its objects are gone
    lost_at = count_parts(out)
    thread.join(timeout=400)
    assert not thread.is_alive(), "the scan did not finish after the node was lost"
    assert "error" not in outcome, repr(outcome.get("error"))
    assert lost_at < items // 4  # the node really died mid-scan

    assert_same_as_local(out, tmp_path / "local", items)
    manifest = outcome["manifest"]
    assert manifest["complete"] and manifest["counts"] == reference["counts"]
    assert manifest["counts"]["items"] == items and manifest["runs"][-1]["items_scanned"] == items


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_driver_killed_mid_scan_resumes_on_ray_exactly(tiny_dir, tmp_path, cluster):
    items, part_size = 45, 3
    safety_dir = save_safety(tiny_dir, tmp_path / "safety")
    files = {**plain_images(items - 2), **{k: v for k, (v, _) in list(broken_images().items())[:2]}}
    corpus = write_folder(tmp_path / "corpus", files)
    settings = ScanSettings(base=str(tiny_dir), safety=str(safety_dir), part_size=part_size, batch_size=1, workers=0)
    reference = run_scan(corpus, tmp_path / "local", settings, progress=False)

    cluster.add_node(**NODE)
    cluster.add_node(**NODE)
    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "safety_modules.cli", "scan", str(corpus), "--base", str(tiny_dir)]
    cmd += ["--safety", str(safety_dir), "--out", str(out), "--part-size", str(part_size), "--batch-size", "1"]
    cmd += ["--workers", "0", "--engine", "ray", "--ray-address", cluster.address]
    kill_after_new_parts(cmd, out, new_parts=2, timeout=300)
    killed_at = count_parts(out)
    assert 0 < killed_at < items // part_size

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-4000:]

    assert_same_as_local(out, tmp_path / "local", items)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"] == reference["counts"]
    run = manifest["runs"][-1]
    assert run["engine"] == "ray" and run["parts_skipped"] >= killed_at
    assert run["items_scanned"] + run["parts_skipped"] * part_size == items
