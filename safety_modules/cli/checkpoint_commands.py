"""Checkpoint commands: ``safevlm fingerprint BASE`` and ``safevlm push DIR --repo-id ID``."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ..errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fingerprint", help="print the fingerprint safety modules record for a base model")
    p.add_argument("base", help="LLaVA-1.5 folder or hub id (HF or original layout)")
    p.add_argument("--json", action="store_true", help="one JSON object: the fingerprint and the known base")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--dtype", default="auto", help="any: the digest is taken at bfloat16 precision")
    p.set_defaults(func=cmd_fingerprint)

    p = sub.add_parser("push", help="publish a safety-modules folder (modules + model card) to the Hugging Face hub")
    p.add_argument("folder", type=Path, help="a safety-modules folder (config.json, model.safetensors)")
    p.add_argument("--repo-id", required=True, help="hub repository, owner/name (created if missing)")
    p.add_argument(
        "--card-data",
        type=Path,
        help="YAML with the card's name, description, base_model, license, training_data, metrics "
        "(a dict or a metrics.json path), tags; rewrites README.md (default: the folder's own "
        "README.md, or a card from the modules' config when there is none)",
    )
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--message", default="Upload safety modules", help="commit message")
    p.add_argument("--dry-run", action="store_true", help="upload nothing; leave the staged files in --local-dir")
    p.add_argument("--local-dir", type=Path, help="with --dry-run: a new or empty folder for the staged files")
    p.set_defaults(func=cmd_push)


def cmd_fingerprint(args: argparse.Namespace) -> int:
    import yaml

    from ..checkpoints import known_base, name_base
    from ..modeling import base_fingerprint
    from ..modeling.llava import load_vision_parts

    parts = load_vision_parts(args.base, dtype=args.dtype, device=args.device)
    fingerprint = base_fingerprint(parts.config, parts.projector)
    known = name_base(fingerprint)
    if args.json:
        print(json.dumps({"base": args.base, "fingerprint": fingerprint, "known_base": known}))
        return 0
    print(f"# fingerprint of {args.base} (the `fingerprint:` block of a known-base manifest)")
    print(yaml.safe_dump({"fingerprint": fingerprint}, sort_keys=False).rstrip())
    print(f"known base: {known or 'none of the manifests in safety_modules/checkpoints/bases/'}")
    manifest = known_base(str(args.base))
    if manifest is not None and manifest.fingerprint != fingerprint:
        differs = sorted(k for k, v in fingerprint.items() if manifest.fingerprint.get(k) != v)
        print(
            f"manifest {manifest.path.name} records other values for {differs}: "
            "fill a null digest from the block above; a differing geometry means another checkpoint"
        )
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from ..checkpoints import (
        CARD_NAME,
        CardData,
        PublishError,
        check_repo_id,
        files_inside,
        stage_files,
        upload_folder,
        write_card,
    )
    from ..modeling import SafetyModules
    from ..modeling.safety_modules import PUBLISHED_FILES

    check_repo_id(args.repo_id)  # before anything is read, staged or sent, also in a dry run
    if args.dry_run != (args.local_dir is not None):
        raise ConfigError("--dry-run and --local-dir go together: the dry run leaves the staged files there")
    files_inside(args.folder, PUBLISHED_FILES)  # refuses a symlink out of the folder before anything reads it
    # Loading checks that the folder is complete and its tensors fit its config before anything is staged.
    modules = SafetyModules.from_pretrained(args.folder, device="cpu")
    rewrite_card = args.card_data is not None or not (args.folder / CARD_NAME).is_file()
    files = [name for name in PUBLISHED_FILES if name != CARD_NAME or not rewrite_card]

    card = CardData.from_yaml(args.card_data) if args.card_data else CardData()  # checked before staging

    def stage(dest: Path) -> list[Path]:
        staged = stage_files(args.folder, dest, files)
        if rewrite_card:
            card.repo_id = card.repo_id or args.repo_id
            staged.append(write_card(dest, modules.config, card))
        return sorted(staged)

    try:
        if args.dry_run:
            staged = stage(args.local_dir)
            print(
                f"dry run: nothing uploaded; {len(staged)} files that would go to {args.repo_id} are in "
                f"{args.local_dir}:"
            )
            for path in staged:
                print(f"  {path.name} ({path.stat().st_size} bytes)")
            return 0
        with tempfile.TemporaryDirectory(prefix="safevlm-push-") as folder:
            stage(Path(folder))
            url = upload_folder(folder, args.repo_id, private=args.private or None, commit_message=args.message)
    except (PublishError, FileExistsError) as exc:
        print(f"safevlm push: error: {exc} (nothing published; {args.folder} is unchanged)", file=sys.stderr)
        return 1
    print(f"pushed {args.folder} to {args.repo_id}: {url}")
    return 0
