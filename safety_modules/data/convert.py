"""Converters from published dataset layouts to the training format, and their registry.

Each converter is one `Converter` entry in `CONVERTERS`: a name, the arguments it
adds to ``safevlm data convert NAME``, and a function returning a `Conversion`.
Adding a source is one `register_converter(...)` call. Every converter takes a
category -> (level, type) mapping (defaults in `safety_modules.taxonomy`); images
are decoded once while converting, so unreadable files are reported with their path
and left out, never fatal.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ..safe_files import read_json, read_yaml
from ..taxonomy import SAFE_LABEL, VLGUARD_SUBCATEGORY_LABELS
from .format import image_problem, make_record, relative_image
from .templates import GENERIC_QUESTIONS, refusal

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
Mapping = dict[str, tuple[int, str]]


@dataclass
class Conversion:
    """Converted records and what was left out: (path or id, reason) pairs."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.records)} records, {len(self.skipped)} skipped"


@dataclass
class Converter:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Conversion]


CONVERTERS: dict[str, Converter] = {}


def register_converter(converter: Converter) -> Converter:
    """Make a converter available as ``safevlm data convert <name>``."""
    CONVERTERS[converter.name] = converter
    return converter


# ---------------------------------------------------------------- helpers shared by converters


def load_mapping(path: str | Path | None, default: Mapping) -> Mapping:
    """A category -> [level, type] mapping from a JSON/YAML file, or the default table."""
    if path is None:
        return dict(default)
    data = read_yaml(path, "mapping file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a mapping file holds {{category: [level, type]}}")
    mapping: Mapping = {}
    for category, value in data.items():
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], int)):
            raise ConfigError(f"{path}: category {category!r} must map to [level, type], got {value!r}")
        mapping[str(category)] = (int(value[0]), str(value[1]))
    return mapping


def mapping_arguments(parser: argparse.ArgumentParser, default: str = "the built-in table") -> None:
    parser.add_argument("--mapping", type=Path, help=f"JSON/YAML {{category: [level, type]}} (default: {default})")


# ---------------------------------------------------------------- image folders labelled by sub-folder


def convert_image_folders(
    root: str | Path,
    mapping: Mapping,
    out_dir: str | Path,
    seed: int = 0,
    safe_folders: tuple[str, ...] = ("safe", "clean"),
) -> Conversion:
    """``root/<category>/**/<image>``: each sub-folder is a category looked up in ``mapping``.

    Folders named in ``safe_folders`` that the mapping does not list are clean (level 0, safe).
    Risky images get a refusal in their type's register; clean ones an empty answer (no caption
    to imitate, so no language-model target). A folder with no mapping is an error, not a guess.
    """
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    unknown = [f.name for f in folders if f.name not in mapping and f.name not in safe_folders]
    if unknown and not mapping:  # folders have no built-in table: only --mapping labels a risky folder
        raise ConfigError(
            f"sub-folders {unknown} need a (level, type): give --mapping FILE ({{category: [level, type]}}); "
            f"without one only folders named {list(safe_folders)} are labelled (clean)"
        )
    if unknown:
        raise InputError(f"sub-folders without a (level, type) in the mapping: {unknown}; known: {sorted(mapping)}")
    rng = random.Random(seed)
    result = Conversion()
    for folder in folders:
        level, type_ = mapping.get(folder.name, SAFE_LABEL)
        for n, path in enumerate(sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)):
            problem = image_problem(path)
            if problem:
                result.skipped.append((str(path), problem))
                continue
            answer = "" if level == 0 else refusal(type_, n)
            rid = f"{folder.name}/{path.relative_to(folder).as_posix()}"
            result.records.append(
                make_record(rid, relative_image(path, out_dir), rng.choice(GENERIC_QUESTIONS), answer, level, type_)
            )
    return result


def _folders_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, help="folder with one sub-folder per category")
    mapping_arguments(p, "none: only folders named safe or clean are labelled without one")


def _folders_run(args: argparse.Namespace) -> Conversion:
    return convert_image_folders(args.root, load_mapping(args.mapping, {}), args.out.parent, seed=args.seed)


register_converter(Converter("folders", "image folders labelled by sub-folder name", _folders_args, _folders_run))


# ---------------------------------------------------------------- VLGuard (train.json / test.json + images)


def convert_vlguard(
    json_path: str | Path,
    image_root: str | Path,
    mapping: Mapping,
    out_dir: str | Path,
    unsafe_instruction_label: tuple[int, str] | None = None,
) -> Conversion:
    """VLGuard's ``train.json``/``test.json``: one record per instruction-response pair.

    Unsafe images carry ``harmful_category``/``harmful_subcategory`` and one ``instruction``; the
    label comes from the subcategory (then the category) in ``mapping``. Safe images carry a
    ``safe_instruction`` (clean record) and an ``unsafe_instruction`` on the same safe image: its
    risk lives only in the text and has no type of its own, so it is skipped unless
    ``unsafe_instruction_label`` gives one.
    """
    json_path, image_root, out_dir = Path(json_path), Path(image_root), Path(out_dir)
    items = read_json(json_path, "VLGuard JSON", max_bytes=1 << 30, error=InputError)
    if not isinstance(items, list):
        raise InputError(f"{json_path}: expected VLGuard's JSON list of items")
    result = Conversion()
    for item in items:
        iid = str(item.get("id"))
        path = image_root / item["image"]
        problem = image_problem(path)
        if problem:
            result.skipped.append((str(path), problem))
            continue
        image = relative_image(path, out_dir)
        if item.get("safe"):
            for pair in item.get("instr-resp", []):
                if "safe_instruction" in pair:
                    result.records.append(
                        make_record(f"{iid}/safe", image, pair["safe_instruction"], pair["response"], *SAFE_LABEL)
                    )
                elif unsafe_instruction_label is not None:
                    result.records.append(
                        make_record(
                            f"{iid}/unsafe_instruction",
                            image,
                            pair["unsafe_instruction"],
                            pair["response"],
                            *unsafe_instruction_label,
                        )
                    )
                else:
                    result.skipped.append((f"{iid}/unsafe_instruction", "text-only risk on a safe image"))
            continue
        sub, cat = item.get("harmful_subcategory", ""), item.get("harmful_category", "")
        label = mapping.get(sub) or mapping.get(cat)
        if label is None:
            raise InputError(f"VLGuard item {iid}: no (level, type) for subcategory {sub!r} or category {cat!r}")
        for k, pair in enumerate(item.get("instr-resp", [])):
            result.records.append(make_record(f"{iid}/{k}", image, pair["instruction"], pair["response"], *label))
    return result


def _parse_label(text: str) -> tuple[int, str]:
    level, _, type_ = text.partition(":")
    if not level.isdigit() or not type_:
        raise argparse.ArgumentTypeError(f"expected LEVEL:TYPE such as 1:misleading, got {text!r}")
    return int(level), type_


def _vlguard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("json", type=Path, help="VLGuard train.json or test.json")
    p.add_argument("image_root", type=Path, help="folder the JSON's image paths are relative to (unzipped train/test)")
    p.add_argument(
        "--unsafe-instruction-label",
        type=_parse_label,
        metavar="LEVEL:TYPE",
        help="keep the unsafe instructions on safe images with this label (default: skip them)",
    )
    mapping_arguments(p)


def _vlguard_run(args: argparse.Namespace) -> Conversion:
    mapping = load_mapping(args.mapping, VLGUARD_SUBCATEGORY_LABELS)
    return convert_vlguard(args.json, args.image_root, mapping, args.out.parent, args.unsafe_instruction_label)


register_converter(Converter("vlguard", "VLGuard train.json/test.json + image folder", _vlguard_args, _vlguard_run))


# -------------------------------------------------------- the benchmarks (loaders in rtvlm.py / unsafe_concepts.py)


def _rtvlm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("snapshot", type=Path, help="local snapshot of MMInstruction/RedTeamingVLM (raw JSONL + zips)")
    p.add_argument(
        "--split",
        choices=["train", "test", "all"],
        default="train",
        help="the seeded 80/20 split the paper trained on (default: train; --seed seeds it)",
    )
    p.add_argument("--train-fraction", type=float, default=0.8)
    mapping_arguments(p)


def _rtvlm_run(args: argparse.Namespace) -> Conversion:
    from ..taxonomy import RTVLM_SUBTASK_LABELS
    from .rtvlm import rtvlm_conversion

    mapping = load_mapping(args.mapping, RTVLM_SUBTASK_LABELS)
    records, skipped = rtvlm_conversion(
        args.snapshot,
        args.out.parent,
        split=args.split,
        seed=args.seed,
        train_fraction=args.train_fraction,
        mapping=mapping,
    )
    return Conversion(records, skipped)


def _unsafe_concepts_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, help="UnsafeConcepts: HF parquet export folder, or metadata.jsonl + images/")
    mapping_arguments(p)
    p.add_argument(
        "--split",
        choices=["all", "train", "test"],
        default="all",
        help="all: every image with a refusal answer (stage 1/2 data); train/test: the RL alignment split "
        "of the paper (per concept 80/20, empty answers, Safe/Unsafe labels; --seed draws the prompts)",
    )
    p.add_argument(
        "--safe-images",
        type=Path,
        help="with --split train/test: a folder of benign images (metadata.json, sub-folders per concept, "
        "or flat files) matched to the unsafe count",
    )
    p.add_argument("--split-seed", type=int, default=2024, help="seed of the 80/20 split (default 2024, the paper's)")


def _unsafe_concepts_run(args: argparse.Namespace) -> Conversion:
    from ..taxonomy import UNSAFE_CONCEPTS_CATEGORY_LABELS
    from .unsafe_concepts import unsafe_concepts_to_records

    mapping = load_mapping(args.mapping, UNSAFE_CONCEPTS_CATEGORY_LABELS)
    if args.split != "all":
        from .unsafe_concepts_split import alignment_split_records

        return Conversion(
            alignment_split_records(
                args.data,
                args.out.parent,
                args.split,
                args.safe_images,
                seed=args.seed,
                split_seed=args.split_seed,
                mapping=mapping,
            )
        )
    if args.safe_images is not None:
        raise ConfigError("--safe-images goes with --split train or test (the RL alignment split)")
    return Conversion(unsafe_concepts_to_records(args.data, args.out.parent, mapping=mapping))


register_converter(Converter("rtvlm", "RTVLM local snapshot (seeded 80/20 split)", _rtvlm_args, _rtvlm_run))
register_converter(
    Converter(
        "unsafe-concepts",
        "UnsafeConcepts (parquet export or SaferVLM layout)",
        _unsafe_concepts_args,
        _unsafe_concepts_run,
    )
)
