"""`make bench-gpu` does not rot: its ``--dry-run`` runs every step on the CPU at the smallest sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gpu_suite_dry_run_runs_every_step_and_prints_one_summary():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "bench/gpu_suite.py", "--dry-run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    summary = done.stdout[done.stdout.index("==== gpu suite: CPU (dry run)") :].splitlines()
    for step in ("pytest device_sensitive", "gate overhead", "scan", "stage-1 step time"):
        assert any(line.startswith(f"{step}: ok (") for line in summary), (step, summary)
    text = "\n".join(summary)
    assert "passed" in text  # the device-sensitive tests ran
    assert "gate_overhead new_tokens=2 allow=" in text
    for size in ("500x375", "1600x1200"):
        for decode in ("off", "auto"):
            # On the CPU the scan decodes on the CPU either way; the manifest says so.
            assert f"scan_step size={size} gpu_decode={decode} jpeg_decode=cpu images=4 " in text
    assert "stage 1, tiny model, batch 8:" in text
    assert "DRY RUN on the CPU: these figures are not GPU figures" in text


def test_make_bench_gpu_runs_the_suite():
    makefile = (REPO / "Makefile").read_text()
    assert "\nbench-gpu: install\n\t$(PY) bench/gpu_suite.py\n" in makefile
