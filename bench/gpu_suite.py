"""The GPU suite: every figure the project wants from one GPU, in one command, within about 8 minutes.

Steps, each a child process with its own time limit (a step that fails or runs out of time is reported
as such and the suite goes on):

  1. ``pytest --device cuda -m device_sensitive``: the tests that compare numbers, on the GPU in bf16;
  2. the gate overhead (`gate_overhead.py`): LLaVA-1.5-7B geometry at full depth (24 vision / 32 text
     layers), bf16, 32 and 128 new tokens;
  3. the scan (``run_scan``) on 500x375 and 1600x1200 JPEGs, with JPEG decoding on the CPU workers and on
     the GPU (``gpu_decode="auto"``; the manifest says which decoder really ran: GPU decoding needs
     torchvision, which a machine may lack), with the 7B vision tower (CLIP-L/14-336, 24 layers) and
     full-size safety modules;
  4. the stage-1 training step time (`stage1_step_time.py`, tiny model).

It ends with one summary block (``==== gpu suite ...``), a line per step. ``--dry-run`` runs the same
steps on the CPU at the smallest sizes (the tiny model, 4 images per size, one round, 1 training step), in
about two minutes: it checks the suite itself (tests/house/test_gpu_suite.py), and its figures mean nothing.

    make bench-gpu                       # = python bench/gpu_suite.py
    python bench/gpu_suite.py --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SIZES = ("500x375", "1600x1200")


@dataclass
class Step:
    """One step of the suite: the command, its time limit and the output lines that go into the summary."""

    name: str
    cmd: list[str]
    timeout: float
    keep: str  # a regular expression: matching output lines go into the summary
    status: str = "not run"
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)

    def run(self, env: dict[str, str]) -> None:
        print(f"\n---- {self.name}: {' '.join(self.cmd)}", flush=True)
        started = time.perf_counter()
        try:
            done = subprocess.run(
                self.cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=self.timeout, check=False
            )
            output, self.status = done.stdout + done.stderr, "ok" if done.returncode == 0 else f"exit {done.returncode}"
        except subprocess.TimeoutExpired as exc:
            output = _text(exc.stdout) + _text(exc.stderr)
            self.status = f"timed out after {self.timeout:.0f} s"
        self.seconds = time.perf_counter() - started
        print(output[-6000:], flush=True)
        self.lines = [line.strip() for line in output.splitlines() if re.search(self.keep, line)]


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def steps(dry: bool, work: Path) -> list[Step]:
    py = sys.executable
    if dry:
        pytest = [py, "-m", "pytest", "--device", "cpu", "-m", "device_sensitive", "-q", "-p", "no:cacheprovider"]
        pytest += ["tests/calibration/test_scores.py"]  # one file: the marker and the --device option still work
        gate = [py, "bench/gate_overhead.py", "--device", "cpu", "--tiny", "--new-tokens", "2", "--rounds", "1"]
        scan = [py, __file__, "--scan-step", str(work), "--images", "4", "--tiny"]
        train = [py, "bench/stage1_step_time.py", "1"]
    else:
        pytest = [py, "-m", "pytest", "--device", "cuda", "-m", "device_sensitive", "-q", "-p", "no:cacheprovider"]
        gate = [py, "bench/gate_overhead.py", "--device", "cuda", "--new-tokens", "32", "128"]
        scan = [py, __file__, "--scan-step", str(work), "--images", "512"]
        train = [py, "bench/stage1_step_time.py", "10"]
    # About 8 minutes on a GPU; the dry run's limits are looser, for a shared CPU.
    slack = 3 if dry else 1
    return [
        Step("pytest device_sensitive", pytest, 150 * slack, r"\d+ (passed|failed|error)|no tests ran"),
        Step("gate overhead", gate, 150 * slack, r"^gate_overhead "),
        Step("scan", scan, 150 * slack, r"^scan_step "),
        Step("stage-1 step time", train, 60 * slack, r"^stage 1, tiny model"),
    ]


def scan_step(work: Path, images: int, tiny: bool) -> None:
    """Step 3 (run in a child): scan JPEGs of each size, CPU decoding then GPU decoding where it can run."""
    import torch

    sys.path.insert(0, str(BENCH))
    from scan_pipeline import build_models, write_photos
    from scan_throughput import build_checkpoint

    from safety_modules.scan import ScanSettings, run_scan

    cuda = torch.cuda.is_available()
    if tiny:
        base, safety = build_models(work)
    else:
        build_checkpoint(work, 24, 1)  # the scan loads the vision tower only: one language-model layer is enough
        base, safety = work / "base", work / "safety"
    for size in SIZES:
        width, height = map(int, size.split("x"))
        folder = work / f"jpeg-{size}"
        write_photos(folder, images, (width, height))
        for decode in ("off", "auto"):
            settings = ScanSettings(
                base=str(base),
                safety=str(safety),
                batch_size=64 if cuda else 2,
                workers="auto" if cuda else 0,
                device="cuda" if cuda else "cpu",
                gpu_decode=decode,
            )
            run_scan(folder, work / f"warm-{size}-{decode}", settings, progress=False)  # load, compile, caches
            run = run_scan(folder, work / f"out-{size}-{decode}", settings, progress=False)["runs"][-1]
            print(
                f"scan_step size={size} gpu_decode={decode} jpeg_decode={run['jpeg_decode']} "
                f"images={run['items_scanned']} images_per_s={run['items_per_second']} "
                f"device={run['device']} workers={run['workers']}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at the smallest sizes")
    parser.add_argument("--scan-step", metavar="WORK", help=argparse.SUPPRESS)  # step 3, run as a child
    parser.add_argument("--images", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scan_step:
        scan_step(Path(args.scan_step), args.images, args.tiny)
        return

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("bench/gpu_suite.py needs a CUDA GPU; --dry-run runs its steps on the CPU at the smallest sizes")
    machine = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "CPU (dry run)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if args.dry_run:
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as work:
        suite = steps(args.dry_run, Path(work))
        for step in suite:
            step.run(env)
    total = time.perf_counter() - started
    print(
        f"\n==== gpu suite: {machine}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    for step in suite:
        print(f"{step.name}: {step.status} ({step.seconds:.0f} s)")
        for line in step.lines:
            print(f"    {line}")
    note = "; DRY RUN on the CPU: these figures are not GPU figures" if args.dry_run else ""
    print(f"total {total:.0f} s{note}")
    print(json.dumps({s.name: s.status for s in suite}))
    sys.exit(0 if all(s.status == "ok" for s in suite) else 1)


if __name__ == "__main__":
    main()
