"""Corpus risk scanning: readers, the vision-only scorer, resumable parquet output, report, Ray engine."""

from ..gate.vision_scorer import VisionScorer
from ..output_lock import OutputLockedError as ScanLockedError
from .engine import run_scan
from .output import output_schema, read_parts, summarize
from .readers import READER_KINDS, CorpusReader, Item, ReaderOptions
from .settings import ScanSettings

__all__ = [
    "READER_KINDS",
    "CorpusReader",
    "Item",
    "ReaderOptions",
    "ScanLockedError",
    "ScanSettings",
    "VisionScorer",
    "output_schema",
    "read_parts",
    "run_scan",
    "summarize",
]
