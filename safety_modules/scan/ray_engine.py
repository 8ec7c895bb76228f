"""The Ray Data engine: the same scan as `local_engine`, spread over a Ray cluster.

Pipeline, over windows of `WINDOW_BATCHES` batches: ``ray.data.from_items`` (one record per batch:
its items' references, serialised, not bytes) -> ``map_batches(_prepare)`` tasks (read + decode +
resize to uint8, as `batches.prepare_batch`) -> ``map_batches(_Score)`` on an actor pool (one GPU
per actor when the cluster has GPUs, a fraction of a CPU otherwise; normalisation on the actor's
device) -> per-batch columns streamed back in input order to the driver, which writes the same
resumable parts as the local engine.
Input files and the model folders must be readable from every node (shared storage or hub ids).
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..gate.pixels import PixelSpec
from ..taxonomy import Taxonomy
from .batches import BatchJob, batch_jobs, prepare_batch
from .items import Item
from .settings import Part, Progress, ScanSettings, WritePart

# Batches handed to Ray per dataset: the driver's memory is bounded by one window (one JSON
# string of references per batch), at the cost of starting the scoring actors once per window.
WINDOW_BATCHES = 4096
# On a small machine Ray deadlocks when map actors hold every CPU: CPU actors and
# preprocessing tasks ask for half a CPU each.
CPU_PER_TASK = 0.5


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[None]:
    """Ray as the scan finds it, or started (at ``address``, else locally) and shut down afterwards."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def _job_record(job: BatchJob) -> dict[str, Any]:
    """A batch as one compact record: the driver keeps strings, not one Python object per item."""
    items = [[position, item.source, item.key, item.ref, item.error] for position, item in job.numbered]
    return {"part": job.part, "last": job.last, "items": json.dumps(items)}


def ray_engine(
    parts: Iterator[Part],
    settings: ScanSettings,
    spec: PixelSpec,
    taxonomy: Taxonomy,
    write: WritePart,
    on_rows: Progress,
) -> None:
    """Score the pending parts on Ray; ``write(index, table)`` once per part, in input order."""
    import pyarrow as pa
    import ray
    import ray.data

    from .output import batch_table, output_schema

    with _ray_session(settings.ray_address):
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = settings.ray_actors or max(1, gpus)
        score_resources = {"num_gpus": 1} if gpus else {"num_cpus": CPU_PER_TASK}
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # batches come back in input order, parts complete in order
        context.enable_progress_bars = False  # the scan's own bar counts items and errors
        schema = output_schema(taxonomy)
        levels = len(taxonomy.levels)
        tables: list[pa.Table] = []  # the part being assembled; it may span two windows
        assembled: set[int] = set()  # the input positions in ``tables``
        sent: dict[int, int] = {}  # items handed to Ray per part not yet written
        written: set[int] = set()
        jobs = batch_jobs(parts, settings.batch_size)
        # The driver holds one window of batch records at a time, so its memory does not grow with the corpus.
        while window := list(itertools.islice(jobs, WINDOW_BATCHES)):
            for job in window:
                sent[job.part] = sent.get(job.part, 0) + len(job.numbered)
            records = [_job_record(job) for job in window]
            dataset = (
                ray.data.from_items(records)
                .map_batches(
                    _prepare,
                    fn_kwargs={"spec": spec, "max_pixels": settings.max_pixels, "draft": settings.draft},
                    batch_size=1,
                    batch_format="numpy",
                    num_cpus=CPU_PER_TASK,
                )
                .map_batches(
                    _Score,
                    fn_constructor_kwargs={"settings": settings},
                    batch_size=1,
                    batch_format="numpy",
                    concurrency=actors,
                    **score_resources,
                )
            )
            for scored in dataset.iter_batches(batch_format="numpy", batch_size=1):
                meta = json.loads(scored["meta"][0])
                if meta["part"] in written or not _new_rows(meta, assembled):
                    continue  # a batch delivered twice (re-executed after a lost node): its rows are in already
                errors = [tuple(e) if e else None for e in meta["errors"]]
                ok = np.array([e is None for e in errors], dtype=bool)
                probs = scored["probs"][0]
                tables.append(
                    batch_table(
                        schema,
                        taxonomy,
                        np.asarray(meta["positions"], dtype=np.int64),
                        meta["ids"],
                        meta["sources"],
                        errors,
                        ok,
                        probs[:, :levels],
                        probs[:, levels:],
                        scored["flags"][0],
                    )
                )
                on_rows(len(errors), len(errors) - tables[-1].column("error").null_count)  # non_finite rows too
                if meta["last"]:
                    expected = sent.pop(meta["part"])
                    if len(assembled) != expected:
                        # Never write a part with rows missing: it would count as done and never be redone.
                        raise RuntimeError(
                            f"part {meta['part']}: Ray returned {len(assembled)} of its {expected} items; "
                            "the part is not written, so running the scan again redoes it"
                        )
                    write(meta["part"], pa.concat_tables(tables))
                    written.add(meta["part"])
                    tables, assembled = [], set()


def _new_rows(meta: dict[str, Any], assembled: set[int]) -> bool:
    """Add a scored batch's input positions to the part's; False for a batch whose rows are all in already.

    Ray Data re-executes the tasks of a lost node; a batch that came back twice is dropped, never counted twice.
    """
    positions = set(meta["positions"])
    if positions <= assembled and positions:
        return False
    if positions & assembled:
        raise RuntimeError(
            f"part {meta['part']}: a batch overlaps rows already scored: {sorted(positions & assembled)}"
        )
    assembled |= positions
    return True


def _prepare(record: dict[str, np.ndarray], spec: PixelSpec, max_pixels: int, draft: bool) -> dict[str, np.ndarray]:
    """Read + decode + resize one batch (a CPU task): its metadata and one uint8 array of the good images."""
    items = [
        (position, Item(source, key, ref, tuple(error) if error else None))
        for position, source, key, ref, error in json.loads(record["items"][0])
    ]
    batch = prepare_batch(BatchJob(int(record["part"][0]), items, bool(record["last"][0])), spec, max_pixels, draft)
    meta = {
        "part": batch.part,
        "last": batch.last,
        "positions": batch.positions.tolist(),
        "ids": batch.ids,
        "sources": batch.sources,
        "errors": batch.errors,
    }
    return {"meta": np.array([json.dumps(meta)], dtype=object), "pixels": _one(batch.pixels.numpy())}


class _Score:
    """An actor holding the vision tower + safety modules; scores the batches it is given."""

    def __init__(self, settings: ScanSettings) -> None:
        from ..gate.vision_scorer import VisionScorer, load_flagger

        self.scorer = VisionScorer.from_pretrained(
            settings.base,
            settings.safety,
            device=settings.device,
            dtype=settings.dtype,
            allow_unverified_base=settings.allow_unverified_base,
        )
        self.flagger = load_flagger(settings.policy, self.scorer.taxonomy)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][0]))
        classes = len(self.scorer.taxonomy.levels) + len(self.scorer.taxonomy.types)
        probs = np.zeros((len(pixels), classes), dtype=np.float32)
        flags = np.zeros(len(pixels), dtype=bool)
        if len(pixels):
            level_probs, type_probs = self.scorer.probabilities_uint8(pixels)
            probs = torch.cat([level_probs, type_probs], dim=1).float().cpu().numpy()
            flags = self.flagger.flag(probs[:, : level_probs.shape[1]], probs[:, level_probs.shape[1] :])
        # Ray wants columns of equal length: this batch is one row holding its arrays.
        return {"meta": batch["meta"], "probs": _one(probs), "flags": _one(flags)}


def _one(array: np.ndarray) -> np.ndarray:
    """``array`` as the single element of an object column (its length may be zero)."""
    holder = np.empty(1, dtype=object)
    holder[0] = array
    return holder
