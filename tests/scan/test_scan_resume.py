"""Kill-and-resume: a real ``safevlm scan`` process SIGKILLed twice, then finished by the same command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safety_modules.scan import ScanSettings, read_parts, run_scan

from ..scan_corpus import broken_images, plain_images, save_safety, write_folder

REPO = Path(__file__).resolve().parents[2]
ITEMS = 90
PART_SIZE = 3


def count_parts(out: Path) -> int:
    return len(list(out.glob("part-*.parquet"))) if out.is_dir() else 0


def start_scan(cmd: list[str]) -> subprocess.Popen:
    # One thread: on a shared 2-core machine, oversubscribed threads slow the tiny model 10x.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_after_new_parts(cmd: list[str], out: Path, new_parts: int, timeout: float = 180.0) -> None:
    """Start the scan, wait until it has written ``new_parts`` more parts, then SIGKILL it (no clean-up runs)."""
    target = count_parts(out) + new_parts
    proc = start_scan(cmd)
    deadline = time.time() + timeout
    while count_parts(out) < target:
        assert proc.poll() is None, f"scan exited before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "scan made no progress"
        time.sleep(0.01)
    time.sleep(0.05)  # land somewhere inside the next part (mid-batch or mid-write)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkill_twice_then_resume_gives_every_item_once_with_identical_scores(tiny_dir, tmp_path):
    safety_dir = save_safety(tiny_dir, tmp_path / "safety")
    files = {**plain_images(ITEMS - 2), **{k: v for k, (v, _) in list(broken_images().items())[:2]}}
    corpus = write_folder(tmp_path / "corpus", files)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "safety_modules.cli",
        "scan",
        str(corpus),
        "--base",
        str(tiny_dir),
        "--safety",
        str(safety_dir),
        "--out",
        str(out),
        "--part-size",
        str(PART_SIZE),
        "--batch-size",
        "1",
        "--workers",
        "0",
    ]
    total_parts = -(-ITEMS // PART_SIZE)

    kill_after_new_parts(cmd, out, new_parts=1)
    first = count_parts(out)
    kill_after_new_parts(cmd, out, new_parts=2)
    second = count_parts(out)
    assert 0 < first < second < total_parts  # both kills landed mid-scan

    finish = start_scan(cmd)
    _, err = finish.communicate(timeout=300)
    assert finish.returncode == 0, err[-2000:]
    assert count_parts(out) == total_parts and not list(out.glob("*.tmp-*"))

    resumed = read_parts(out)
    ids = resumed.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == ITEMS and sorted(ids) == sorted(f"corpus:{n}" for n in files)

    # The same scan, never interrupted, in this process.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = run_scan(
            corpus,
            tmp_path / "ref",
            ScanSettings(base=str(tiny_dir), safety=str(safety_dir), part_size=PART_SIZE, batch_size=1, workers=0),
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    assert reference["counts"]["items"] == ITEMS
    assert resumed.equals(read_parts(tmp_path / "ref"))  # identical rows and scores, bit for bit
