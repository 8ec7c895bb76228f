"""`run_scan`: read a corpus, score every image with the vision-only path, write resumable parts.

The local engine decodes and preprocesses in PyTorch DataLoader workers and runs batched
inference in the main process; ``engine="ray"`` runs the same steps on Ray Data
(`ray_engine`). Both produce the same parts, the same schema and the same manifest.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..images import DEFAULT_MAX_PIXELS
from ..modeling.fingerprint import projector_digest
from .output import ScanOutput
from .readers import CorpusReader, Item, ReaderOptions
from .scorer import Flagger, VisionScorer, load_flagger, prepare, result_rows

Part = tuple[int, list[tuple[int, Item]]]  # (part index, [(input position, item), ...])
Progress = Callable[[int, int], None]  # (rows done, errors among them)


@dataclass
class ScanSettings:
    """Everything but the input and the output folder that a scan is run with."""

    base: str
    safety: str
    policy: str | None = None
    batch_size: int = 32
    workers: int = 2
    device: str | None = None
    dtype: str = "auto"
    part_size: int = 1000
    max_pixels: int = DEFAULT_MAX_PIXELS
    engine: str = "local"
    ray_address: str | None = None
    ray_actors: int | None = None


def split_parts(reader: CorpusReader, part_size: int) -> Iterator[Part]:
    """The input's items in consecutive parts of ``part_size`` (the last may be shorter)."""
    numbered = enumerate(reader)
    for index in itertools.count():
        chunk = list(itertools.islice(numbered, part_size))
        if not chunk:
            return
        yield index, chunk


def run_scan(input_path: str | Path, out_dir: str | Path, settings: ScanSettings,
             reader_options: ReaderOptions | None = None, progress: bool = True) -> dict[str, Any]:
    """Scan ``input_path`` into ``out_dir`` (resuming whatever is there already); returns the manifest."""
    from tqdm.auto import tqdm

    started = time.time()
    reader = CorpusReader(input_path, reader_options)
    # The Ray driver only checks the models (on CPU); its actors load their own copies.
    device = "cpu" if settings.engine == "ray" else settings.device
    scorer = VisionScorer.from_pretrained(settings.base, settings.safety, device=device, dtype=settings.dtype)
    flagger = load_flagger(settings.policy, scorer.taxonomy)
    output = ScanOutput(out_dir, _manifest_settings(reader, scorer, flagger, settings), scorer.taxonomy)

    total = reader.count()
    done = output.completed_parts()
    size = settings.part_size
    skipped = sum(max(0, min(size, total - k * size)) for k in done)
    pending = (part for part in split_parts(reader, size) if part[0] not in done)
    bar = tqdm(total=total, initial=skipped, unit="img", desc="scan", disable=not progress, smoothing=0.1)
    tally = {"items": 0, "errors": 0}

    def on_rows(rows: int, errors: int) -> None:
        tally["items"] += rows
        tally["errors"] += errors
        bar.update(rows)
        bar.set_postfix(errors=tally["errors"], refresh=False)

    if settings.engine == "local":
        parts = local_engine(pending, scorer, flagger, settings, on_rows)
    elif settings.engine == "ray":
        from .ray_engine import ray_engine

        parts = ray_engine(pending, settings, scorer.image_processor, on_rows)
    else:
        raise ValueError(f"unknown engine {settings.engine!r}; use 'local' or 'ray'")
    scan_started = time.time()
    for index, rows in parts:
        output.write_part(index, rows)
    bar.close()
    finished = time.time()
    run = {
        "engine": settings.engine, "device": str(scorer.device) if settings.engine == "local" else "ray actors",
        "batch_size": settings.batch_size, "workers": settings.workers,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "items_scanned": tally["items"], "parts_skipped": len(done),
        "load_seconds": round(scan_started - started, 3), "scan_seconds": round(finished - scan_started, 3),
        "items_per_second": round(tally["items"] / max(finished - scan_started, 1e-9), 2),
    }
    return output.finish(run, total)


def local_engine(parts: Iterator[Part], scorer: VisionScorer, flagger: Flagger, settings: ScanSettings,
                 on_rows: Progress) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Decode in DataLoader workers, score batches in this process; yields each part's rows in order."""
    for index, numbered in parts:
        dataset = _PreparedItems(numbered, scorer.image_processor, settings.max_pixels)
        loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, num_workers=settings.workers,
                                             collate_fn=list)
        rows: list[dict[str, Any]] = []
        for batch in loader:
            records, pixels, errors = zip(*batch)
            new = result_rows(list(records), list(pixels), list(errors), scorer, flagger)
            rows.extend(new)
            on_rows(len(new), sum(e is not None for e in errors))
        yield index, rows


class _PreparedItems(torch.utils.data.Dataset):
    """One part's items, read and preprocessed on access (in a DataLoader worker)."""

    def __init__(self, numbered: list[tuple[int, Item]], image_processor: Any, max_pixels: int) -> None:
        self.numbered = numbered
        self.image_processor = image_processor
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.numbered)

    def __getitem__(self, i: int):
        position, item = self.numbered[i]
        pixels, error = prepare(item, self.image_processor, self.max_pixels)
        return {"index": position, "id": item.id, "source": item.source}, pixels, error


def _manifest_settings(reader: CorpusReader, scorer: VisionScorer, flagger: Flagger,
                       settings: ScanSettings) -> dict[str, Any]:
    """What must not change between a scan and its resumption (it decides the parts and the scores)."""
    def where(name: str) -> str:
        return str(Path(name).resolve()) if Path(name).exists() else name

    return {
        "input": reader.describe(),
        "base": where(settings.base),
        "safety": where(settings.safety),
        "base_fingerprint": scorer.fingerprint,
        "safety_digest": projector_digest(scorer.safety),
        "taxonomy": {"levels": list(scorer.taxonomy.levels), "types": list(scorer.taxonomy.types),
                     "safe_type": scorer.taxonomy.safe_type},
        "policy": flagger.description,
        "dtype": settings.dtype,
        "part_size": settings.part_size,
        "max_pixels": settings.max_pixels,
    }
