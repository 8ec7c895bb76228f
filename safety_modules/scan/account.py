"""The account of a scan: every item the reader saw ends in a row or in a counted skip.

A reader counts, per source (the file or shard an item comes from), the items it yielded (each
becomes exactly one row), the entries it skipped and why (a LLaVA record without an image), the ids
it renamed to keep them unique, and the files or tar members it did not read because they are not
images (captions, metadata), by suffix. `ScanOutput.finish` sets these beside the rows the parts
hold, per source and in total: the scan is ``complete`` only when every source has exactly as many
rows as items.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

INPUT = "(input)"  # the source of counts about the input folder itself (files no reader reads)


@dataclass
class SourceAccount:
    """What the reader did with one source."""

    items: int = 0  # yielded: each must become one row
    skipped: Counter = field(default_factory=Counter)  # reason -> entries with nothing to scan
    renamed: Counter = field(default_factory=Counter)  # reason -> ids changed to stay unique
    not_images: Counter = field(default_factory=Counter)  # suffix -> files/members that are not images


class Account:
    """Per-source counts kept while a reader streams its items (reset at every pass)."""

    def __init__(self) -> None:
        self.sources: dict[str, SourceAccount] = {}

    def of(self, source: str) -> SourceAccount:
        found = self.sources.get(source)
        if found is None:
            found = self.sources[source] = SourceAccount()
        return found

    @property
    def items(self) -> int:
        return sum(s.items for s in self.sources.values())

    def report(self, rows: pa.Table) -> dict[str, Any]:
        """The account against ``rows`` (the parts' ``source`` and ``error_kind`` columns), for the manifest.

        ``missing_rows``: items of a source that have no row (a part not written, an input that changed).
        """
        written: dict[str, Counter] = {}
        if rows.num_rows:
            grouped = rows.group_by(["source", "error_kind"]).aggregate([([], "count_all")]).to_pylist()
            for g in grouped:
                written.setdefault(g["source"], Counter())[g["error_kind"]] += g["count_all"]
        by_source = {}
        for name in sorted(set(self.sources) | set(written)):
            mine = self.sources.get(name, SourceAccount())
            kinds = written.get(name, Counter())
            row_count = sum(kinds.values())
            errors = dict(sorted((k, v) for k, v in kinds.items() if k is not None))
            entry: dict[str, Any] = {
                "seen": mine.items + sum(mine.skipped.values()),
                "rows": row_count,
                "scored": kinds.get(None, 0),
                "errors_by_kind": errors,
                "skipped_by_reason": dict(sorted(mine.skipped.items())),
            }
            if mine.renamed:
                entry["renamed_ids"] = dict(sorted(mine.renamed.items()))
            if mine.not_images:
                entry["not_images"] = dict(sorted(mine.not_images.items()))
            if row_count != mine.items:
                entry["missing_rows"] = mine.items - row_count
            by_source[name] = entry
        return {**_totals(by_source.values()), "by_source": by_source}


def _totals(entries) -> dict[str, Any]:
    total: dict[str, Any] = {"seen": 0, "rows": 0, "scored": 0, "errors": 0, "missing_rows": 0}
    counters: dict[str, Counter] = {k: Counter() for k in ("errors_by_kind", "skipped_by_reason", "renamed_ids")}
    not_images: Counter = Counter()
    for entry in entries:
        for key in ("seen", "rows", "scored", "missing_rows"):
            total[key] += entry.get(key, 0)
        for key, counter in counters.items():
            counter.update(entry.get(key, {}))
        not_images.update(entry.get("not_images", {}))
    total["errors"] = sum(counters["errors_by_kind"].values())
    total["skipped"] = sum(counters["skipped_by_reason"].values())
    total.update({k: dict(sorted(c.items())) for k, c in counters.items()})
    total["not_images"] = dict(sorted(not_images.items()))
    return total
