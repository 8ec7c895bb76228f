"""What a scan is run with, and the small types its engines share.

This module sits below both engines (`local_engine`, `ray_engine`) and the runner that picks
one (`engine.run_scan`), so that none of them imports another's types.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..images import DEFAULT_MAX_PIXELS
from .items import Item

Part = tuple[int, list[tuple[int, Item]]]  # (part index, [(input position, item), ...])
Progress = Callable[[int, int], None]  # (rows done, errors among them)
WritePart = Callable[[int, Any], Any]  # (part index, pyarrow.Table of its rows in input order)

# Beyond this many decode workers the main process (feeding the device, collecting rows)
# becomes the bottleneck on the machines measured (issue 10: 8 to 15 workers on 16 cores).
MAX_AUTO_WORKERS = 16


@dataclass
class ScanSettings:
    """Everything but the input and the output folder that a scan is run with.

    ``workers``: decode processes, or ``"auto"`` (`resolve_workers`). ``draft``: decode large
    JPEGs at a reduced scale (PIL draft mode) and shrink large images in integer steps first
    (Pillow ``reducing_gap``); images up to twice the model's input size are decoded and resized
    exactly as the CLIP image processor does either way. ``gpu_decode``: ``"auto"`` decodes JPEGs
    on the GPU when the scan runs on CUDA and torchvision is importable; ``"off"`` never does.
    """

    base: str
    safety: str
    policy: str | None = None
    batch_size: int = 32
    workers: int | str = "auto"
    device: str | None = None
    dtype: str = "auto"
    part_size: int = 1000
    max_pixels: int = DEFAULT_MAX_PIXELS
    engine: str = "local"
    ray_address: str | None = None
    ray_actors: int | None = None
    draft: bool = True
    gpu_decode: str = "auto"
    allow_unverified_base: bool = False  # modules whose config names no base (see SafeLlava.from_pretrained)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int | str) -> int:
    """``"auto"``: one decode worker per usable core but one (left to the process feeding the device), 1 to 16."""
    if workers == "auto":
        return max(1, min(available_cores() - 1, MAX_AUTO_WORKERS))
    try:
        count = int(workers)
    except ValueError:
        count = -1
    if count < 0:
        raise ConfigError(f"--workers must be >= 0 or auto, got {workers!r}")
    return count
