"""Whole batches, prepared in a worker: the items' ids and errors, and one uint8 tensor of their pixels.

`batch_jobs` cuts the pending parts into batches at fixed positions inside each part (so a
redone part gets the same batches); `prepare_batch` reads, decodes and resizes one batch (in a
DataLoader worker or a Ray task) into a `PreparedBatch`, which crosses to the main process as
one tensor and a few lists, not one object per item.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..gate.pixels import PixelSpec, prepare_bytes
from ..images import DEFAULT_MAX_PIXELS
from .gpu_decode import passthrough_jpeg
from .items import Item, ItemError, load_bytes
from .settings import Part


@dataclass
class BatchJob:
    """One batch to prepare: consecutive items of one part; ``last`` closes the part."""

    part: int
    numbered: list[tuple[int, Item]]  # (input position, item)
    last: bool


def batch_jobs(parts: Iterator[Part], batch_size: int) -> Iterator[BatchJob]:
    """The pending parts as batches, in input order (a part's last batch may be shorter)."""
    for index, numbered in parts:
        for start in range(0, len(numbered), batch_size):
            yield BatchJob(index, numbered[start : start + batch_size], start + batch_size >= len(numbered))


@dataclass
class PreparedBatch:
    """A batch's rows (in input order) and the uint8 pixels of those that decoded (``ok``)."""

    part: int
    last: bool
    positions: np.ndarray  # int64 (n,)
    ids: list[str]
    sources: list[str]
    errors: list[tuple[str, str] | None]  # (kind, message) or None
    ok: np.ndarray  # bool (n,)
    pixels: torch.Tensor  # uint8 (k, 3, H, W): the good rows decoded here, in order
    jpegs: list[bytes]  # the good rows left for the GPU to decode (`gpu_decode`), in order
    from_gpu: np.ndarray  # bool (ok.sum(),): which good rows are in ``jpegs`` rather than ``pixels``

    def pin_memory(self) -> PreparedBatch:
        """Called by the DataLoader's pin-memory thread: page-locked pixels copy to the GPU asynchronously."""
        self.pixels = self.pixels.pin_memory()
        return self


def prepare_uint8(
    item: Item, spec: PixelSpec, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True
) -> tuple[np.ndarray | None, tuple[str, str] | None]:
    """Read, decode, resize one item: ``(uint8 (3, H, W), None)`` or ``(None, (kind, message))``."""
    try:
        source = load_bytes(item)
    except ItemError as exc:
        return None, (exc.kind, str(exc).split(": ", 1)[-1])
    return prepare_bytes(source, spec, max_pixels, draft)


def prepare_batch(
    job: BatchJob, spec: PixelSpec, max_pixels: int, draft: bool, pass_jpegs: bool = False
) -> PreparedBatch:
    """Read, decode and resize every item of ``job``; broken items keep their row with the error.

    With ``pass_jpegs``, plain JPEGs are left encoded for the GPU (`gpu_decode.passthrough_jpeg`).
    """
    arrays, errors, jpegs, from_gpu = [], [], [], []
    for _, item in job.numbered:
        raw = passthrough_jpeg(item, spec, max_pixels) if pass_jpegs else None
        if raw is not None:
            jpegs.append(raw)
            errors.append(None)
            from_gpu.append(True)
            continue
        array, error = prepare_uint8(item, spec, max_pixels, draft)
        errors.append(error)
        if array is not None:
            arrays.append(array)
            from_gpu.append(False)
    ok = np.array([e is None for e in errors], dtype=bool)
    if arrays:
        pixels = torch.from_numpy(np.stack(arrays))
    else:
        height, width = spec.crop or spec.resize_to or (1, 1)
        pixels = torch.empty((0, 3, height, width), dtype=torch.uint8)
    return PreparedBatch(
        part=job.part,
        last=job.last,
        positions=np.array([p for p, _ in job.numbered], dtype=np.int64),
        ids=[item.id for _, item in job.numbered],
        sources=[item.source for _, item in job.numbered],
        errors=errors,
        ok=ok,
        pixels=pixels,
        jpegs=jpegs,
        from_gpu=np.array(from_gpu, dtype=bool),
    )


class BatchPreparer(torch.utils.data.Dataset):
    """A DataLoader dataset whose "indices" are `BatchJob`s: each worker prepares whole batches.

    Used with ``batch_sampler=`` an iterator of one-job lists and ``collate_fn=only``: the
    DataLoader hands a job to a worker, and the worker returns one `PreparedBatch`.
    """

    def __init__(self, spec: PixelSpec, max_pixels: int, draft: bool, pass_jpegs: bool = False) -> None:
        self.spec = spec
        self.max_pixels = max_pixels
        self.draft = draft
        self.pass_jpegs = pass_jpegs

    def __getitems__(self, jobs: list[BatchJob]) -> list[PreparedBatch]:
        return [prepare_batch(job, self.spec, self.max_pixels, self.draft, self.pass_jpegs) for job in jobs]

    def __getitem__(self, job: BatchJob) -> PreparedBatch:  # type: ignore[override]
        return prepare_batch(job, self.spec, self.max_pixels, self.draft, self.pass_jpegs)


def only(batch: list[PreparedBatch]) -> PreparedBatch:
    """The DataLoader's collate function: each request holds exactly one prepared batch."""
    return batch[0]
