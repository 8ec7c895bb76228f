"""A scan output folder of any size without scanning: parquet parts and a manifest as `safevlm scan` writes them.

The report's tests and its open-time bench need scans of 100 to 100,000 rows with flagged rows, error
rows of several kinds and several sources; scoring that many images on a CPU takes too long. The rows
come from the scan's own schema and writer (`scan.output`), with random probabilities (seeded), so the
report reads exactly what it reads after a real scan. Its input path does not exist: the report shows
"no thumbnail" for every row, as it does when a scanned input has moved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..scan.output import MANIFEST_NAME, ScanOutput, batch_table, write_json_atomic
from ..taxonomy import Taxonomy

ERROR_KINDS = ("not_an_image", "truncated", "empty", "too_large")


def write_synthetic_scan(
    out_dir: str | Path,
    rows: int,
    flagged_share: float = 0.5,
    error_share: float = 0.05,
    sources: int = 4,
    part_size: int = 10_000,
    seed: int = 0,
) -> Path:
    """Write ``rows`` rows (about ``flagged_share`` flagged, ``error_share`` errors) over ``sources`` shards."""
    taxonomy = Taxonomy()
    rng = np.random.default_rng(seed)
    settings = {
        "input": {"path": str(Path(out_dir).resolve() / "no-such-input"), "reader": "wds"},
        "base": "tiny-llava",
        "safety": "synthetic",
        "taxonomy": {"levels": list(taxonomy.levels), "types": list(taxonomy.types), "safe_type": taxonomy.safe_type},
        "policy": {
            "name": "synthetic",
            "mode": "threshold",
            "source": "default",
            "rules": {t: {"enabled": True, "hint": 0.5, "refuse": 0.8} for t in taxonomy.risk_types},
        },
        "part_size": part_size,
    }
    output = ScanOutput(out_dir, settings, taxonomy)
    schema = output.schema
    for part, start in enumerate(range(0, rows, part_size)):
        n = min(part_size, rows - start)
        positions = np.arange(start, start + n)
        source = [f"shard-{i % sources:05d}.tar" for i in positions]
        ids = [f"{s}:sample/{i:07d}-{'long-name-' * (i % 3)}" for s, i in zip(source, positions)]
        is_error = rng.random(n) < error_share
        errors = [
            (ERROR_KINDS[i % len(ERROR_KINDS)], f"item {i}: a made-up {ERROR_KINDS[i % len(ERROR_KINDS)]} failure")
            if bad
            else None
            for i, bad in zip(positions, is_error)
        ]
        ok = ~is_error
        k = int(ok.sum())
        type_probs = rng.dirichlet(np.full(len(taxonomy.types), 0.4), size=k).astype(np.float32)
        level_probs = rng.dirichlet(np.full(len(taxonomy.levels), 0.4), size=k).astype(np.float32)
        flags = rng.random(k) < flagged_share
        table = batch_table(schema, taxonomy, positions, ids, source, errors, ok, level_probs, type_probs, flags)
        output.write_part(part, table)
    output.manifest["complete"] = True
    write_json_atomic(output.dir / MANIFEST_NAME, output.manifest)
    return output.dir
