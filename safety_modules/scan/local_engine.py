"""The local engine: one pool of decode workers, the device, and a writer thread, all busy at once.

- One DataLoader for the whole scan: its batch sampler streams `BatchJob`s over every pending
  part, so the worker processes start once. Each worker prepares whole batches (uint8, one
  tensor per batch); at most ``2 x workers`` batches are in flight.
- The main thread copies each batch to the device (pinned memory, non-blocking), normalises and
  scores it there, starts the copy of the probabilities back, and hands them to the writer
  without waiting: scoring batch k overlaps the workers preparing batch k+1 and the writer
  finishing batch k-1.
- The writer thread waits for the probabilities, applies the policy, builds the rows column by
  column and writes each part when its last batch is in. Its queue is bounded, so a slow disk
  slows the scan down instead of filling memory.

Nothing per item outlives its part: memory stays flat however long the scan.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..gate.pixels import prepare_bytes
from ..gate.vision_scorer import Flagger, VisionScorer
from .batches import BatchPreparer, PreparedBatch, batch_jobs, only
from .gpu_decode import decode_on_device, gpu_decode_available, merge_rows
from .output import batch_table, output_schema
from .settings import Part, Progress, ScanSettings, WritePart, resolve_workers

WRITER_QUEUE = 4  # scored batches waiting for the writer


def local_engine(
    parts: Iterator[Part],
    scorer: VisionScorer,
    flagger: Flagger,
    settings: ScanSettings,
    write: WritePart,
    on_rows: Progress,
) -> None:
    """Score every pending part; ``write(index, table)`` is called once per part, in input order."""
    workers = resolve_workers(settings.workers)
    cuda = scorer.device.type == "cuda"
    pass_jpegs = gpu_decode_available(settings.gpu_decode, scorer.device)
    loader = torch.utils.data.DataLoader(
        BatchPreparer(scorer.pixel_spec, settings.max_pixels, settings.draft, pass_jpegs),
        batch_sampler=([job] for job in batch_jobs(parts, settings.batch_size)),
        collate_fn=only,
        num_workers=workers,
        pin_memory=cuda,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
    writer = _Writer(scorer, flagger, write, on_rows)
    writer.start()
    try:
        for batch in loader:
            writer.submit(_score(scorer, batch, cuda, settings))
    finally:
        writer.close()


def _score(
    scorer: VisionScorer, batch: PreparedBatch, cuda: bool, settings: ScanSettings
) -> tuple[PreparedBatch, Any, Any]:
    """Queue the batch's scoring on the device; returns it with its probabilities still in flight."""
    pixels = _device_pixels(scorer, batch, settings) if batch.jpegs else batch.pixels
    if not len(pixels):
        return batch, None, None
    level_probs, type_probs = scorer.probabilities_uint8(pixels)
    probs = torch.cat([level_probs, type_probs], dim=1).float()
    if not cuda:
        return batch, probs, None
    host = probs.to("cpu", non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return batch, host, done


def _device_pixels(scorer: VisionScorer, batch: PreparedBatch, settings: ScanSettings) -> torch.Tensor:
    """The batch's good rows on the device, its passed-through JPEGs decoded there (`gpu_decode`).

    Should the GPU decoder reject a batch, its JPEGs are decoded here on the CPU instead, one by one,
    with the scan's own pixel cap and draft setting, and any that fail there become error rows as on the CPU path.
    """
    try:
        decoded = decode_on_device(batch.jpegs, scorer.pixel_spec, scorer.device)
        return merge_rows(batch.pixels, decoded, batch.from_gpu)
    except RuntimeError:
        pass
    arrays, cpu_rows = list(batch.pixels.numpy()), iter(range(len(batch.pixels)))
    jpegs, merged = iter(batch.jpegs), []
    good_rows = np.flatnonzero(batch.ok)
    for row, from_gpu in zip(good_rows, batch.from_gpu):
        if not from_gpu:
            merged.append(arrays[next(cpu_rows)])
            continue
        array, error = prepare_bytes(next(jpegs), scorer.pixel_spec, settings.max_pixels, settings.draft)
        if error is None:
            merged.append(array)
        else:
            batch.errors[row], batch.ok[row] = error, False
    shape = (0, 3, *(scorer.pixel_spec.crop or scorer.pixel_spec.resize_to or (1, 1)))
    return torch.from_numpy(np.stack(merged)) if merged else torch.empty(shape, dtype=torch.uint8)


class _Writer(threading.Thread):
    """Turns scored batches into rows and parts, off the main thread."""

    def __init__(self, scorer: VisionScorer, flagger: Flagger, write: WritePart, on_rows: Progress) -> None:
        super().__init__(name="scan-writer", daemon=True)
        self.queue: queue.Queue = queue.Queue(maxsize=WRITER_QUEUE)
        self.taxonomy = scorer.taxonomy
        self.schema = output_schema(scorer.taxonomy)
        self.flagger = flagger
        self.write = write
        self.on_rows = on_rows
        self.error: BaseException | None = None

    def submit(self, scored: tuple[PreparedBatch, Any, Any]) -> None:
        """Hand over one scored batch (blocks while the queue is full); re-raises the writer's failure."""
        while True:
            self._raise_if_failed()
            try:
                self.queue.put(scored, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Finish the queued batches and stop; re-raises the writer's failure."""
        while self.is_alive():
            try:
                self.queue.put(None, timeout=0.2)
                break
            except queue.Full:
                continue
        self.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError("the scan's writer thread failed") from self.error

    def run(self) -> None:
        tables: list[pa.Table] = []
        try:
            while (scored := self.queue.get()) is not None:
                batch, probs, done = scored
                table = self._table(batch, probs, done)
                tables.append(table)
                self.on_rows(table.num_rows, table.num_rows - table.column("error").null_count)
                if batch.last:
                    self.write(batch.part, pa.concat_tables(tables))
                    tables = []
        except BaseException as exc:  # reported to the main thread by submit/close
            self.error = exc

    def _table(self, batch: PreparedBatch, probs: Any, done: Any) -> pa.Table:
        levels = len(self.taxonomy.levels)
        if probs is None:
            values = np.zeros((0, levels + len(self.taxonomy.types)), dtype=np.float32)
        else:
            if done is not None:
                done.synchronize()  # the device finished this batch and its copy back
            values = probs.numpy()
        level_probs, type_probs = values[:, :levels], values[:, levels:]
        flags = self.flagger.flag(level_probs, type_probs) if len(values) else np.zeros(0, dtype=bool)
        return batch_table(
            self.schema,
            self.taxonomy,
            batch.positions,
            batch.ids,
            batch.sources,
            batch.errors,
            batch.ok,
            level_probs,
            type_probs,
            flags,
        )
