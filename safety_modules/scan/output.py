"""Scan output: parquet parts written atomically, resumable, and a ``manifest.json``.

Part ``k`` holds the items ``[k * part_size, (k + 1) * part_size)`` of the input, in
input order. A part is written to a temporary file and renamed into place, so a part
file either exists complete or not at all: a scan killed at any moment (even during a
write) and restarted skips the parts that exist, never rewrites them, and redoes only
the missing ones. Temporary files left by a killed writer are removed on restart.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ConfigError, InputError
from ..safe_files import read_json
from ..taxonomy import Taxonomy
from .account import Account

MANIFEST_NAME = "manifest.json"
NON_FINITE = "non_finite"
_PART_RE = re.compile(r"^part-(\d{6})\.parquet$")


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def output_schema(taxonomy: Taxonomy) -> pa.Schema:
    """Columns of every part: ids, the error (null when fine), probabilities, decisions."""
    fields = [
        pa.field("index", pa.int64()),  # position in the input, 0-based
        pa.field("id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("error", pa.string()),  # "kind: message", null when the item was scored
        pa.field("error_kind", pa.string()),
    ]
    fields += [pa.field(f"p_{name}", pa.float32()) for name in taxonomy.types]
    fields += [pa.field(f"p_level_{name}", pa.float32()) for name in taxonomy.levels]
    fields += [pa.field("level", pa.string()), pa.field("type", pa.string()), pa.field("flagged", pa.bool_())]
    return pa.schema(fields)


def batch_table(
    schema: pa.Schema,
    taxonomy: Taxonomy,
    positions: np.ndarray,
    ids: list[str],
    sources: list[str],
    errors: list[tuple[str, str] | None],
    ok: np.ndarray,
    level_probs: np.ndarray,
    type_probs: np.ndarray,
    flags: np.ndarray,
) -> pa.Table:
    """One batch's rows as a table, column by column; the scores are those of the ``ok`` rows, in order.

    Error rows get ``error``/``error_kind`` and nulls elsewhere; scored rows get every probability,
    the top level and type, and ``flagged``. A row whose probabilities are not all finite becomes an
    error row of kind ``non_finite``.
    """
    n = len(ids)
    finite = np.isfinite(level_probs).all(1) & np.isfinite(type_probs).all(1)
    if not finite.all():  # a NaN/inf score is an error row, never a clean one
        bad = np.flatnonzero(ok)[~finite]
        ok, errors = ok.copy(), list(errors)
        ok[bad] = False
        for row in bad:
            errors[row] = (NON_FINITE, "the safety modules gave non-finite probabilities (NaN or inf)")
        level_probs, type_probs, flags = level_probs[finite], type_probs[finite], np.asarray(flags)[finite]
    null = ~ok

    def scattered(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
        full = np.zeros(n, dtype=values.dtype)
        full[ok] = values
        return pa.array(full, type=arrow_type, mask=null)

    def names(labels: tuple[str, ...] | list[str], probs: np.ndarray) -> pa.Array:
        top = np.asarray(labels, dtype=object)[probs.argmax(1)] if len(probs) else np.array([], dtype=object)
        full = np.full(n, None, dtype=object)
        full[ok] = top
        return pa.array(full, type=pa.string())

    columns = {
        "index": pa.array(positions, type=pa.int64()),
        "id": pa.array(ids, type=pa.string()),
        "source": pa.array(sources, type=pa.string()),
        "error": pa.array([None if e is None else f"{e[0]}: {e[1]}" for e in errors], type=pa.string()),
        "error_kind": pa.array([None if e is None else e[0] for e in errors], type=pa.string()),
    }
    for j, name in enumerate(taxonomy.types):
        columns[f"p_{name}"] = scattered(type_probs[:, j].astype(np.float32), pa.float32())
    for j, name in enumerate(taxonomy.levels):
        columns[f"p_level_{name}"] = scattered(level_probs[:, j].astype(np.float32), pa.float32())
    columns["level"] = names(taxonomy.levels, level_probs)
    columns["type"] = names(taxonomy.types, type_probs)
    columns["flagged"] = scattered(np.asarray(flags, dtype=bool), pa.bool_())
    return pa.table([columns[f.name] for f in schema], schema=schema)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")  # strict JSON: no bare NaN, ever
    os.replace(tmp, path)


class ScanOutput:
    """An output folder: which parts are done, writing new ones, and the manifest.

    ``settings`` (input, models, policy, part size) are stored in the manifest; restarting
    into a folder written with other settings is refused, because its parts would not line up.
    """

    def __init__(self, out_dir: str | Path, settings: dict[str, Any], taxonomy: Taxonomy) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.schema = output_schema(taxonomy)
        self.part_size = int(settings["part_size"])
        manifest_path = self.dir / MANIFEST_NAME
        self.manifest: dict[str, Any] = {"settings": settings, "runs": []}
        if manifest_path.is_file():
            previous = read_manifest(self.dir)
            if previous.get("settings") != settings:
                raise ConfigError(
                    f"{self.dir} holds a scan with other settings: {_differences(previous.get('settings'), settings)}; "
                    "resume with the same command or use a new --out folder"
                )
            self.manifest = previous
        elif any(self.dir.glob("part-*.parquet")):
            raise ConfigError(f"{self.dir} holds parquet parts but no {MANIFEST_NAME}; use a new --out folder")
        for stale in self.dir.glob("*.tmp-*"):
            stale.unlink()  # half-written by a killed run; its part is redone
        write_json_atomic(manifest_path, self.manifest)

    def completed_parts(self) -> set[int]:
        return {int(m.group(1)) for p in self.dir.iterdir() if (m := _PART_RE.match(p.name))}

    def write_part(self, index: int, table: pa.Table) -> Path:
        """Write one part's rows atomically (temporary file, fsync, rename); an existing part is never replaced."""
        final = self.dir / part_name(index)
        if final.exists():
            raise FileExistsError(f"{final} is complete already and is never rewritten")
        tmp = self.dir / f"{final.name}.tmp-{os.getpid()}"
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        return final

    def finish(self, run: dict[str, Any], account: Account) -> dict[str, Any]:
        """Record this run, the totals over every part and the reader's account; returns the manifest.

        ``complete`` is true only when every source has one row per item its reader yielded (so every
        item seen is a row or a counted skip).
        """
        has_parts = any(_PART_RE.match(p.name) for p in self.dir.iterdir())
        columns = ["source", "error_kind", "type", "level", "flagged"]
        table = read_parts(self.dir, columns) if has_parts else self.schema.empty_table().select(["index", *columns])
        counts = summarize(table)
        counts["expected_items"] = account.items
        self.manifest["runs"].append(run)
        self.manifest["counts"] = counts
        self.manifest["account"] = account.report(table.select(["source", "error_kind"]))
        self.manifest["complete"] = all("missing_rows" not in s for s in self.manifest["account"]["by_source"].values())
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json_atomic(self.dir / MANIFEST_NAME, self.manifest)
        return self.manifest


MAX_MANIFEST_BYTES = 1 << 30  # 1 GiB: the account holds one short entry per source, however many


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """A scan folder's ``manifest.json`` through the one JSON loader: a damaged one is one clear error.

    Its cap is larger than a config's: the account holds a line per source (shard, file) of the corpus."""
    path = Path(out_dir) / MANIFEST_NAME
    manifest = read_json(path, "scan manifest", max_bytes=MAX_MANIFEST_BYTES, error=InputError)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("settings"), dict):
        raise InputError(f"{path}: not a scan manifest (a JSON object with its settings)")
    return manifest


def _differences(before: Any, now: Any, where: str = "") -> str:
    """The settings that differ, by dotted name, with both values: ``policy.rules.privacy.hint 0.5 -> 0.7``."""
    if isinstance(before, dict) and isinstance(now, dict):
        keys = [k for k in dict.fromkeys([*before, *now]) if before.get(k) != now.get(k)]
        return "; ".join(_differences(before.get(k), now.get(k), f"{where}.{k}" if where else str(k)) for k in keys)
    return f"{where or 'settings'} was {json.dumps(before)}, now {json.dumps(now)}"


def read_parts(out_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Every part of a scan as one table (``columns`` only, if given), in input order."""
    files = sorted(p for p in Path(out_dir).iterdir() if _PART_RE.match(p.name))
    if not files:
        raise FileNotFoundError(f"{out_dir} holds no scan parts (part-*.parquet)")
    if columns is not None and "index" not in columns:
        columns = ["index", *columns]
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files]).sort_by("index")


def summarize(table: pa.Table) -> dict[str, Any]:
    """Counts for the manifest and the report: items, errors by kind, flagged, per type and level.

    Counted by Arrow, column by column: no Python object per row, however large the scan.
    """

    def tally(column: str) -> dict[str, int]:
        counts = pc.value_counts(table.column(column).drop_null()).to_pylist()
        return dict(sorted((c["values"], c["counts"]) for c in counts))

    errors = tally("error_kind")
    return {
        "items": table.num_rows,
        "scored": table.num_rows - sum(errors.values()),
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        "flagged": int(pc.sum(table.column("flagged")).as_py() or 0),
        "by_type": tally("type"),
        "by_level": tally("level"),
    }
