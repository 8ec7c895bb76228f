"""Serve command: ``safevlm serve`` runs the OpenAI-compatible guarded server."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError

MB = 1024 * 1024


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve moderations and guarded chat over an OpenAI-compatible HTTP API")
    p.add_argument("--base", required=True, help="LLaVA-1.5 folder or hub id (HF or original layout)")
    p.add_argument("--safety", required=True, help="safety-modules folder or hub id")
    p.add_argument("--lora", help="stage-2 LoRA adapter folder for the language model (not in proxy mode)")
    p.add_argument("--policy", help="default, argmax, allow-all or a policy YAML laid over the shipped default")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", help="the model id clients see (default: the base folder's name)")
    p.add_argument("--max-batch", type=int, default=16, help="most requests per model call")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits for more requests")
    p.add_argument("--api-key-file", type=Path, help="file holding the bearer token clients must send")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body accepted")
    p.add_argument("--max-image-pixels", type=int, default=25_000_000, help="largest decoded image (pixels)")
    p.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs (off by default)")
    p.add_argument("--remote-timeout-s", type=float, default=10.0, help="timeout for fetching a remote image")
    p.add_argument("--max-remote-mb", type=float, default=8.0, help="largest remote image download")
    p.add_argument("--max-tokens", type=int, default=256, help="max_tokens when a request gives none")
    p.add_argument("--max-tokens-limit", type=int, default=2048, help="largest max_tokens a request may ask for")
    p.add_argument(
        "--upstream",
        help="proxy mode: OpenAI-compatible server answering allowed requests (the language model is not loaded here)",
    )
    p.add_argument("--upstream-model", help="model name sent upstream (default: the client's)")
    p.add_argument("--upstream-api-key-file", type=Path, help="file holding the upstream's bearer token")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto")
    p.set_defaults(func=cmd_serve)


def _read_key(path: Path | None) -> str | None:
    if path is None:
        return None
    key = path.read_text().strip()
    if not key:
        raise ConfigError(f"{path} is empty: it must hold the API key")
    return key


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..serve import (
        InputLimits,
        LlavaRunner,
        ModelRunner,
        ServeConfig,
        VisionRunner,
        create_app,
    )

    if args.upstream and args.lora:
        raise ConfigError("--lora has no effect in proxy mode (--upstream): the language model is not loaded")
    limits = InputLimits(
        max_body_bytes=int(args.max_body_mb * MB),
        max_image_pixels=args.max_image_pixels,
        allow_remote_images=args.allow_remote_images,
        remote_timeout_s=args.remote_timeout_s,
        max_remote_bytes=int(args.max_remote_mb * MB),
    )
    config = ServeConfig(
        model_name=args.model_name or Path(str(args.base).rstrip("/")).name,
        limits=limits,
        api_key=_read_key(args.api_key_file),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        default_max_tokens=args.max_tokens,
        max_tokens_limit=args.max_tokens_limit,
        upstream=args.upstream,
        upstream_model=args.upstream_model,
        upstream_api_key=_read_key(args.upstream_api_key_file),
    )
    runner: ModelRunner
    if args.upstream:
        runner = VisionRunner.load(args.base, args.safety, args.policy, device=args.device, dtype=args.dtype)
    else:
        runner = LlavaRunner.load(
            args.base, args.safety, args.policy, lora=args.lora, device=args.device, dtype=args.dtype
        )
    app = create_app(runner, config)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if not args.verbose else "info")
    return 0
