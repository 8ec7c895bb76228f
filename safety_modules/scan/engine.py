"""`run_scan`: read a corpus, score every image with the vision-only path, write resumable parts.

The runner: it locks the output folder, loads the scorer, works out which parts are still
missing and hands them to an engine. ``engine="local"`` (`local_engine`) decodes in a pool of
worker processes and scores on this process's device; ``engine="ray"`` (`ray_engine`) runs the
same steps on Ray Data. Both produce the same parts, the same schema and the same manifest.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..gate.vision_scorer import Flagger, VisionScorer, load_flagger
from ..modeling.fingerprint import projector_digest
from ..output_lock import OutputLock
from .gpu_decode import gpu_decode_available
from .local_engine import local_engine
from .output import ScanOutput
from .readers import CorpusReader, ReaderOptions
from .settings import Part, ScanSettings, resolve_workers

__all__ = ["ScanSettings", "run_scan", "split_parts"]


def split_parts(reader: CorpusReader, part_size: int) -> Iterator[Part]:
    """The input's items in consecutive parts of ``part_size`` (the last may be shorter)."""
    numbered = enumerate(reader)
    for index in itertools.count():
        chunk = list(itertools.islice(numbered, part_size))
        if not chunk:
            return
        yield index, chunk


def run_scan(
    input_path: str | Path,
    out_dir: str | Path,
    settings: ScanSettings,
    reader_options: ReaderOptions | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Scan ``input_path`` into ``out_dir`` (resuming whatever is there already); returns the manifest.

    Refuses (`ScanLockedError`, an `output_lock.OutputLockedError`) while another scan writes into ``out_dir``.
    """
    if settings.engine not in ("local", "ray"):
        raise ConfigError(f"unknown engine {settings.engine!r}; use 'local' or 'ray'")
    with OutputLock(out_dir):
        return _run_locked(input_path, out_dir, settings, reader_options, progress)


def _run_locked(
    input_path: str | Path,
    out_dir: str | Path,
    settings: ScanSettings,
    reader_options: ReaderOptions | None,
    progress: bool,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    started = time.time()
    reader = CorpusReader(input_path, reader_options)
    # The Ray driver only checks the models (on CPU); its actors load their own copies.
    device = "cpu" if settings.engine == "ray" else settings.device
    scorer = VisionScorer.from_pretrained(
        settings.base,
        settings.safety,
        device=device,
        dtype=settings.dtype,
        allow_unverified_base=settings.allow_unverified_base,
    )
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

    scan_started = time.time()
    local = settings.engine == "local"
    if local:
        local_engine(pending, scorer, flagger, settings, output.write_part, on_rows)
    else:
        from .ray_engine import ray_engine

        ray_engine(pending, settings, scorer.pixel_spec, scorer.taxonomy, output.write_part, on_rows)
    bar.close()
    finished = time.time()
    run = {
        "engine": settings.engine,
        "device": str(scorer.device) if local else "ray actors",
        "batch_size": settings.batch_size,
        "workers": resolve_workers(settings.workers),
        "jpeg_decode": "gpu" if local and gpu_decode_available(settings.gpu_decode, scorer.device) else "cpu",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "items_scanned": tally["items"],
        "parts_skipped": len(done),
        "load_seconds": round(scan_started - started, 3),
        "scan_seconds": round(finished - scan_started, 3),
        "items_per_second": round(tally["items"] / max(finished - scan_started, 1e-9), 2),
    }
    return output.finish(run, reader.account)


def _manifest_settings(
    reader: CorpusReader, scorer: VisionScorer, flagger: Flagger, settings: ScanSettings
) -> dict[str, Any]:
    """What must not change between a scan and its resumption (it decides the parts and the scores)."""

    def where(name: str) -> str:
        return str(Path(name).resolve()) if Path(name).exists() else name

    return {
        "input": reader.describe(),
        "base": where(settings.base),
        "safety": where(settings.safety),
        "base_fingerprint": scorer.fingerprint,
        "safety_digest": projector_digest(scorer.safety),
        "taxonomy": {
            "levels": list(scorer.taxonomy.levels),
            "types": list(scorer.taxonomy.types),
            "safe_type": scorer.taxonomy.safe_type,
        },
        "policy": flagger.description,
        "dtype": settings.dtype,
        "part_size": settings.part_size,
        "max_pixels": settings.max_pixels,
        "preprocess": "uint8, draft" if settings.draft else "uint8, exact",
    }
