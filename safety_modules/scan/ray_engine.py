"""The Ray Data engine: the same scan as `engine.local_engine`, spread over a Ray cluster.

Pipeline: ``ray.data.from_items`` (item references, not bytes) -> ``map_batches(_prepare_batch)``
tasks (read + decode + preprocess) -> ``map_batches(_Score)`` on an actor pool (one GPU per
actor when the cluster has GPUs, a fraction of a CPU otherwise) -> rows streamed back in
input order to the driver, which writes the same resumable parts as the local engine.
Input files and the model folders must be readable from every node (shared storage or hub ids).
"""
from __future__ import annotations

import json
from typing import Any, Iterator

import numpy as np

from .engine import Part, Progress, ScanSettings
from .readers import Item

# On a small machine Ray deadlocks when map actors hold every CPU: CPU actors and
# preprocessing tasks ask for half a CPU each.
CPU_PER_TASK = 0.5


def ray_engine(parts: Iterator[Part], settings: ScanSettings, image_processor: Any,
               on_rows: Progress) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Score the pending parts on Ray; yields ``(part index, rows)`` in input order."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if settings.ray_address:
            ray.init(address=settings.ray_address)
        else:
            ray.init(include_dashboard=False)
    try:
        yield from _run(list(parts), settings, image_processor, on_rows)
    finally:
        if started_here:
            ray.shutdown()


def _run(parts: list[Part], settings: ScanSettings, image_processor: Any,
         on_rows: Progress) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    import ray
    import ray.data

    records = [{"part": index, "index": position, "item": json.dumps(vars(item))}
               for index, numbered in parts for position, item in numbered]
    if not records:
        return
    expected = {index: len(numbered) for index, numbered in parts}
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = settings.ray_actors or max(1, gpus)
    score_resources = {"num_gpus": 1} if gpus else {"num_cpus": CPU_PER_TASK}

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come back in input order, parts complete in order
    context.enable_progress_bars = False  # the scan's own bar counts items and errors
    dataset = (
        ray.data.from_items(records)
        .map_batches(_prepare_batch, fn_kwargs={"image_processor": image_processor, "max_pixels": settings.max_pixels},
                     batch_size=settings.batch_size, batch_format="numpy", num_cpus=CPU_PER_TASK)
        .map_batches(_Score, fn_constructor_kwargs={"settings": settings}, batch_size=settings.batch_size,
                     batch_format="numpy", concurrency=actors, **score_resources)
    )
    pending: dict[int, list[dict[str, Any]]] = {}
    for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
        rows = _batch_rows(batch)
        on_rows(len(rows), sum(row["error"] is not None for row in rows))
        for row in rows:
            pending.setdefault(row.pop("part"), []).append(row)
        for index in sorted(pending):
            if len(pending[index]) == expected[index]:
                yield index, sorted(pending.pop(index), key=lambda row: row["index"])


def _prepare_batch(batch: dict[str, np.ndarray], image_processor: Any, max_pixels: int) -> dict[str, np.ndarray]:
    """Read + decode + preprocess a batch of items (a CPU task). Broken items get an error and zero pixels."""
    from .scorer import prepare

    pixels, errors, ids, sources = [], [], [], []
    for text in batch["item"]:
        fields = json.loads(text)
        item = Item(fields["source"], fields["key"], fields["ref"], tuple(fields["error"]) if fields["error"] else None)
        values, error = prepare(item, image_processor, max_pixels)
        pixels.append(values)
        errors.append("" if error is None else json.dumps(error))
        ids.append(item.id)
        sources.append(item.source)
    shape = next((p.shape for p in pixels if p is not None), (3, 1, 1))
    stacked = np.stack([np.zeros(shape, np.float32) if p is None else p.numpy() for p in pixels])
    return {"part": batch["part"], "index": batch["index"], "id": np.array(ids, dtype=object),
            "source": np.array(sources, dtype=object), "error": np.array(errors, dtype=object), "pixels": stacked}


class _Score:
    """An actor holding the vision tower + safety modules; scores the batches it is given."""

    def __init__(self, settings: ScanSettings) -> None:
        from .scorer import VisionScorer, load_flagger

        self.scorer = VisionScorer.from_pretrained(settings.base, settings.safety, device=settings.device,
                                                   dtype=settings.dtype)
        self.flagger = load_flagger(settings.policy, self.scorer.taxonomy)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from .scorer import result_rows

        records = [{"index": int(i), "id": str(d), "source": str(s)}
                   for i, d, s in zip(batch["index"], batch["id"], batch["source"])]
        errors = [tuple(json.loads(e)) if e else None for e in batch["error"]]
        pixels = [None if e else torch.from_numpy(np.ascontiguousarray(p)) for e, p in zip(errors, batch["pixels"])]
        rows = result_rows(records, pixels, errors, self.scorer, self.flagger)
        # Ray wants columns; rows are sent as JSON so error rows can keep their nulls.
        return {"part": batch["part"], "row": np.array([json.dumps(row) for row in rows], dtype=object)}


def _batch_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    rows = []
    for part, text in zip(batch["part"], batch["row"]):
        row = json.loads(text)
        row["part"] = int(part)
        rows.append(row)
    return rows
