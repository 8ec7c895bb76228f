"""Scanning commands: ``scan`` (score every image of a corpus) and ``scan-report``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError
from ..images import DEFAULT_MAX_PIXELS
from .model_flags import add_allow_unverified_base

DEFAULT_THUMBNAILS = 200  # scan.report.DEFAULT_THUMBNAILS, not imported: `--help` stays free of pyarrow/matplotlib


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help="score every image of a corpus with the vision tower + safety modules only")
    p.add_argument(
        "input",
        type=Path,
        help="image folder, LLaVA JSON/JSONL, .tar/.tar.gz shards, parquet, or a save_to_disk folder (detected)",
    )
    p.add_argument("--base", required=True, help="LLaVA-1.5 folder or hub id (HF or original layout)")
    p.add_argument("--safety", required=True, help="safety-modules folder or hub id")
    add_allow_unverified_base(p)
    p.add_argument("--out", required=True, type=Path, help="output folder (parquet parts + manifest.json); resumable")
    p.add_argument(
        "--policy",
        help="the policy deciding 'flagged': default (the default), argmax, allow-all (alias none) or a YAML",
    )
    p.add_argument(
        "--reader",
        default="auto",
        choices=["auto", "folder", "llava", "wds", "parquet", "hf"],
        help="input format (default: detected)",
    )
    p.add_argument(
        "--image-root",
        help="llava/parquet/hf: the folder relative image paths start from (a path leaving it: outside_root error)",
    )
    p.add_argument(
        "--allow-absolute-paths",
        action="store_true",
        help="llava/parquet/hf: read absolute image paths too (default: an outside_root error row)",
    )
    p.add_argument("--image-column", help="parquet/hf: the image column (default: detected)")
    p.add_argument("--id-column", help="parquet/hf: a column of stable keys (default: id/key/uid, else the row number)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument(
        "--workers",
        default="auto",
        help="processes that read, decode and resize (default auto: the usable cores but one, at most 16)",
    )
    p.add_argument(
        "--no-draft",
        dest="draft",
        action="store_false",
        help="decode large JPEGs at full size and resize in one step (slower; exact for every size)",
    )
    p.add_argument(
        "--gpu-decode",
        default="auto",
        choices=["auto", "off"],
        help="auto: decode JPEGs on the GPU when scanning on CUDA with torchvision installed",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    p.add_argument("--part-size", type=int, default=1000, help="items per output part (the unit of resumption)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="decompression-bomb cap per image")
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="local DataLoader or Ray Data")
    p.add_argument("--ray-address", help="join an existing Ray cluster (default: start a local Ray)")
    p.add_argument("--ray-actors", type=int, help="scoring actors (default: one per GPU, else 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser(
        "scan-report",
        help="write report.html for a scan folder, and clean/flagged id lists",
        description="Write one self-contained HTML page (opens from disk, nothing fetched): the settings and "
        "policy, counts per type, level, error kind and source, score histograms, and every flagged and error "
        "row in a table to sort, filter and page through.",
    )
    p.add_argument("out_dir", type=Path, help="the scan's output folder (parquet parts + manifest.json)")
    p.add_argument("--output", type=Path, help="where to write the page (default: OUT_DIR/report.html)")
    p.add_argument(
        "--thumbnails",
        "--top-k",
        dest="top_k",
        type=int,
        default=DEFAULT_THUMBNAILS,
        help="how many flagged rows, the highest risk first, get an embedded thumbnail (each ~3 KB)",
    )
    p.add_argument("--no-blur", action="store_true", help="show the thumbnails unblurred")
    p.add_argument("--export-clean", type=Path, help="write the ids that are not flagged (and not errors), one a line")
    p.add_argument("--export-flagged", type=Path, help="write the flagged ids, one a line")
    p.set_defaults(func=cmd_scan_report)


def cmd_scan(args: argparse.Namespace) -> int:
    from ..scan import ReaderOptions, ScanSettings, run_scan
    from ..scan.settings import resolve_workers

    if args.batch_size < 1 or args.part_size < 1:
        raise ConfigError("--batch-size and --part-size must be >= 1")
    workers = args.workers if args.workers == "auto" else resolve_workers(args.workers)
    settings = ScanSettings(
        base=args.base,
        safety=args.safety,
        policy=args.policy,
        batch_size=args.batch_size,
        workers=workers,
        device=args.device,
        dtype=args.dtype,
        part_size=args.part_size,
        max_pixels=args.max_pixels,
        engine=args.engine,
        ray_address=args.ray_address,
        ray_actors=args.ray_actors,
        draft=args.draft,
        gpu_decode=args.gpu_decode,
        allow_unverified_base=args.allow_unverified_base,
    )
    options = ReaderOptions(
        kind=args.reader,
        image_root=args.image_root,
        image_column=args.image_column,
        id_column=args.id_column,
        allow_absolute_paths=args.allow_absolute_paths,
    )
    manifest = run_scan(args.input, args.out, settings, options, progress=not args.no_progress)
    print("\n".join(summary_lines(manifest, args.out)))
    return 0 if manifest["complete"] else 1


def summary_lines(manifest: dict, out: Path, per_source: int = 20) -> list[str]:
    """The scan's account for the terminal: totals, then each source that has errors, skips or missing rows."""
    counts, account = manifest["counts"], manifest["account"]
    lines = [
        f"scanned {counts['items']} items into {out}: {counts['scored']} scored, {counts['flagged']} flagged, "
        f"{counts['errors']} errors {json.dumps(counts['errors_by_kind'])}",
        f"account: {account['seen']} seen = {account['rows']} rows + {account['skipped']} skipped "
        f"{json.dumps(account['skipped_by_reason'])}; renamed ids {json.dumps(account['renamed_ids'])}; "
        f"not images (not scanned) {json.dumps(account['not_images'])}",
    ]
    notable = {
        name: s
        for name, s in account["by_source"].items()
        if s["errors_by_kind"] or s["skipped_by_reason"] or "missing_rows" in s
    }
    for name, s in list(notable.items())[:per_source]:
        missing = f", {s['missing_rows']} MISSING" if "missing_rows" in s else ""
        lines.append(
            f"  {name}: {s['seen']} seen, {s['scored']} scored, errors {json.dumps(s['errors_by_kind'])}, "
            f"skipped {json.dumps(s['skipped_by_reason'])}{missing}"
        )
    if len(notable) > per_source:
        lines.append(f"  ... {len(notable) - per_source} more sources: manifest.json, account.by_source")
    if manifest["complete"]:
        lines.append("complete: every item seen is a row or a counted skip")
    else:
        lines.append(f"INCOMPLETE: {account['missing_rows']} items have no row; run the same command again to resume")
    return lines


def cmd_scan_report(args: argparse.Namespace) -> int:
    from ..scan.report import write_report

    path = write_report(
        args.out_dir,
        args.output,
        top_k=args.top_k,
        blur=not args.no_blur,
        export_clean=args.export_clean,
        export_flagged=args.export_flagged,
    )
    print(f"report written to {path}")
    return 0
