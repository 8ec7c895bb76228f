"""The scan pipeline against its preprocessing ceiling, on the tiny model (CPU).

With the tiny model the vision pass is cheap, as a GPU makes it cheap for the real one, so what
is measured is the pipeline: reading, decoding, resizing, handing batches over, normalising,
writing. In one run, on the same JPEGs, with the same workers and batch size, alternating rounds:

  (p) the preprocessing ceiling: the scan's own worker pool (one DataLoader, `BatchPreparer`,
      uint8 batches) read to the end with nothing done with the batches;
  (m) the scoring alone: the same images as uint8 batches already in memory, normalised and
      scored in this process (what a GPU makes nearly free, and a CPU does not);
  (s) `run_scan` end to end (reader, workers, normalise + score, policy, parquet parts), timed
      from the first item to the last part written (the manifest's ``scan_seconds``; model loading
      is excluded, worker start-up is included in (p) and (s)).

Each keeps its best round. On a CPU the scoring shares the cores with the workers, so (s) cannot
pass ``min(p, m, cores / (workers / p + 1 / m))``: each image costs ``workers / p`` core-seconds of
decoding and ``1 / m`` of scoring, spread perfectly over the cores at best. The line before the
last gives (s) against that bound too. Last line: ``scan_pipeline vs_preprocess=<s/p> images_per_s=<s> workers=<w>``.

``--rss`` instead scans ``--rss-items`` (default 20,000) small synthetic images and prints the
resident memory of the scan process (and of its workers) after 2,000 items and at the end.

    python bench/scan_pipeline.py [--images 512] [--size 500x375] [--workers 2] [--batch-size 32] [--rounds 3]
    python bench/scan_pipeline.py --rss [--rss-items 20000]
    python bench/scan_pipeline.py --draft-decode

``--draft-decode`` instead times the decode of one 2000 x 1500 JPEG (quality 90) at full size and in
draft mode (the scan's default for large JPEGs), best of 5 x 10 each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path


def build_models(work: Path) -> tuple[Path, Path]:
    from safety_modules import SafeLlava
    from safety_modules.testing.tiny import make_tiny

    base = make_tiny(work / "base", seed=0)
    safety = SafeLlava.from_pretrained(base, seed=0).safety.save_pretrained(work / "safety")
    return base, safety


def write_photos(folder: Path, count: int, size: tuple[int, int]) -> None:
    """``count`` JPEGs (quality 90) of scikit-image photos at ``size``, each slightly different."""
    from PIL import Image
    from skimage import data

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry"]
    sources = [Image.fromarray(getattr(data, n)()).convert("RGB").resize(size, Image.BICUBIC) for n in names]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = sources[i % len(sources)].rotate(i % 7, fillcolor=(i % 255, 0, 0))
        image.save(folder / f"{i:06d}.jpg", quality=90)


def preprocess_rate(folder: Path, base: Path, workers: int, batch_size: int) -> float:
    """Images/s of the scan's worker pool alone, batches discarded as they arrive."""
    import torch

    from safety_modules.gate.pixels import PixelSpec
    from safety_modules.modeling.llava import load_vision_parts
    from safety_modules.scan.batches import BatchPreparer, batch_jobs, only
    from safety_modules.scan.engine import split_parts
    from safety_modules.scan.readers import CorpusReader

    spec = PixelSpec.from_processor(load_vision_parts(base, dtype="fp32", device="cpu").image_processor)
    started = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        BatchPreparer(spec, 50_000_000, True),
        batch_sampler=([job] for job in batch_jobs(split_parts(CorpusReader(folder), 1000), batch_size)),
        collate_fn=only,
        num_workers=workers,
        prefetch_factor=2 if workers else None,
    )
    count = sum(len(batch.ids) for batch in loader)
    return count / (time.perf_counter() - started)


def scoring_rate(folder: Path, base: Path, safety: Path, batch_size: int) -> float:
    """Images/s of normalise + vision tower + safety modules on uint8 batches already in memory."""
    from safety_modules.scan import CorpusReader, VisionScorer
    from safety_modules.scan.batches import batch_jobs, prepare_batch
    from safety_modules.scan.engine import split_parts

    scorer = VisionScorer.from_pretrained(base, safety, device="cpu", dtype="fp32")
    jobs = batch_jobs(split_parts(CorpusReader(folder), 1000), batch_size)
    batches = [prepare_batch(job, scorer.pixel_spec, 50_000_000, True).pixels for job in jobs]
    started = time.perf_counter()
    for pixels in batches:
        scorer.probabilities_uint8(pixels)
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def scan_rate(folder: Path, out: Path, base: Path, safety: Path, workers: int, batch_size: int) -> float:
    from safety_modules.scan import ScanSettings, run_scan

    settings = ScanSettings(
        base=str(base), safety=str(safety), workers=workers, batch_size=batch_size, device="cpu", dtype="fp32"
    )
    run = run_scan(folder, out, settings, progress=False)["runs"][-1]
    return run["items_scanned"] / run["scan_seconds"]


def draft_decode_run() -> None:
    """Milliseconds to decode one 2000 x 1500 JPEG exactly and in draft mode, for a 336-px CLIP input."""
    import io
    import timeit

    from PIL import Image
    from skimage import data
    from transformers import CLIPImageProcessor

    from safety_modules.gate.pixels import PixelSpec, decode

    processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    spec = PixelSpec.from_processor(processor)
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((2000, 1500), Image.BICUBIC).save(buffer, "JPEG", quality=90)
    raw = buffer.getvalue()
    full, drafted = (
        min(timeit.repeat(lambda d=d: decode(raw, spec, draft=d), number=10, repeat=5)) / 10 for d in (False, True)
    )
    print(f"2000x1500 JPEG decode: full {full * 1e3:.1f} ms, draft {drafted * 1e3:.1f} ms")
    print(f"scan_pipeline_draft speedup={full / drafted:.1f}")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_run(work: Path, base: Path, safety: Path, args: argparse.Namespace) -> None:
    """RSS of the scan process (and its workers) after 2,000 items and after ``--rss-items``."""
    import psutil
    from PIL import Image

    from safety_modules.scan import ScanSettings, run_scan

    folder = work / "many"
    folder.mkdir()
    first = folder / "000000.jpg"
    Image.new("RGB", (64, 48), (90, 120, 30)).save(first, quality=90)
    for i in range(1, args.rss_items):
        os.link(first, folder / f"{i:06d}.jpg")  # same bytes, distinct items
    out, part_size, marks, trail = work / "rss-out", 500, {}, {}
    me = psutil.Process()

    def sample() -> None:
        """Every 50 ms: the scan process's RSS and its workers'; kept at 2,000 items and the last before the end."""
        while "end" not in marks:
            done = len(list(out.glob("part-*.parquet"))) * part_size if out.is_dir() else 0
            try:
                now = (me.memory_info().rss, sum(c.memory_info().rss for c in me.children(recursive=True)), done)
            except psutil.NoSuchProcess:  # a worker exited between listing and reading
                continue
            if done >= 2000 and 2000 not in marks:
                marks[2000] = now
            if now[1]:  # while the workers still run: the last sample of the scan proper
                marks["last"] = now
                step = done // 2500 * 2500
                if step and step not in trail:
                    trail[step] = now[0]
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    settings = ScanSettings(
        base=str(base),
        safety=str(safety),
        workers=args.workers,
        batch_size=args.batch_size,
        part_size=part_size,
        device="cpu",
        dtype="fp32",
    )
    manifest = run_scan(folder, out, settings, progress=False)
    marks["end"] = True
    sampler.join()
    (early, early_workers, _), (late, late_workers, late_done) = marks[2000], marks["last"]
    print(
        f"scan process RSS at 2,000 items: {early / 2**20:.1f} MiB (workers {early_workers / 2**20:.1f} MiB); "
        f"at {late_done:,} of {manifest['counts']['items']:,} items: {late / 2**20:.1f} MiB "
        f"(workers {late_workers / 2**20:.1f} MiB); {manifest['runs'][-1]['items_per_second']} images/s"
    )
    print(
        "scan process RSS along the scan (items: MiB): "
        + ", ".join(f"{items:,}: {rss / 2**20:.0f}" for items, rss in sorted(trail.items()))
    )
    print(f"scan_pipeline_rss at_2k_mib={early / 2**20:.1f} at_end_mib={late / 2**20:.1f} ratio={late / early:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", default="500x375", help="JPEG size WxH")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the scan process")
    parser.add_argument("--rss", action="store_true", help="measure memory over a long scan instead")
    parser.add_argument("--rss-items", type=int, default=20_000)
    parser.add_argument("--draft-decode", action="store_true", help="time draft-mode JPEG decoding instead")
    args = parser.parse_args()
    if args.draft_decode:
        draft_decode_run()
        return

    import torch

    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="scan-pipeline-"))
    try:
        base, safety = build_models(work)
        if args.rss:
            rss_run(work, base, safety, args)
            return
        width, height = map(int, args.size.split("x"))
        write_photos(work / "images", args.images, (width, height))
        scan_rate(work / "images", work / "warmup", base, safety, args.workers, args.batch_size)  # caches, imports
        rates = []
        for round_ in range(args.rounds):
            pre = preprocess_rate(work / "images", base, args.workers, args.batch_size)
            model = scoring_rate(work / "images", base, safety, args.batch_size)
            scan = scan_rate(work / "images", work / f"out-{round_}", base, safety, args.workers, args.batch_size)
            rates.append((pre, model, scan))
            print(f"round {round_}: preprocess {pre:7.1f}, scoring {model:7.1f}, scan {scan:7.1f} images/s")
        pre, model, scan = (max(r[i] for r in rates) for i in range(3))
        cores = len(os.sched_getaffinity(0))
        bound = min(pre, model, cores / (max(args.workers, 1) / pre + 1 / model))
        print(
            f"{args.images} JPEGs {width}x{height}, batch {args.batch_size}, {args.workers} workers, "
            f"torch threads {args.threads}, {os.cpu_count()} CPUs; 1-min load average {load_at_start:.1f} at start, "
            f"{os.getloadavg()[0]:.1f} at end (other jobs on these cores add noise)"
        )
        print(f"(p) preprocessing ceiling: {pre:7.1f} images/s")
        print(f"(m) scoring alone:         {model:7.1f} images/s")
        print(f"(s) run_scan end to end:   {scan:7.1f} images/s")
        print(f"bound on {cores} shared cores: {bound:.1f} images/s; vs_bound={scan / bound:.3f}")
        print(f"scan_pipeline vs_preprocess={scan / pre:.3f} images_per_s={scan:.1f} workers={args.workers}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
