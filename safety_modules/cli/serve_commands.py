"""Serve command: ``safevlm serve`` runs the OpenAI-compatible guarded server."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .model_flags import add_allow_unverified_base

MB = 1024 * 1024


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve moderations and guarded chat over an OpenAI-compatible HTTP API")
    p.add_argument("--base", required=True, help="LLaVA-1.5 folder or hub id (HF or original layout)")
    p.add_argument("--safety", required=True, help="safety-modules folder or hub id")
    add_allow_unverified_base(p)
    p.add_argument("--lora", help="stage-2 LoRA adapter folder for the language model (not in proxy mode)")
    p.add_argument(
        "--policy",
        help="default (the default), argmax, allow-all (alias none) or a policy YAML laid over the shipped default",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--served-model-name",
        "--model-name",
        nargs="+",
        dest="served_model_name",
        metavar="NAME",
        help="the model ids clients may ask for, first one answered by default (default: the base folder's name); "
        "another id is a 404 model_not_found",
    )
    p.add_argument(
        "--moderation-model-names",
        nargs="*",
        default=["omni-moderation-latest", "text-moderation-latest"],
        metavar="NAME",
        help="more ids accepted on /v1/moderations (default: OpenAI's, so client code runs unchanged)",
    )
    p.add_argument("--max-batch", type=int, default=16, help="most requests per model call")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting for the model at most (then 429)")
    p.add_argument(
        "--request-timeout-s", type=float, default=300.0, help="deadline of one request, queueing included (then 504)"
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        help="longest prompt in tokens, image and safety tokens included (default: the model's context length)",
    )
    p.add_argument("--header-timeout-s", type=float, default=10.0, help="close connections whose headers are slower")
    p.add_argument("--body-timeout-s", type=float, default=30.0, help="answer 408 when the body is slower")
    p.add_argument("--keep-alive-s", type=int, default=5, help="close idle keep-alive connections after this")
    p.add_argument("--max-connections", type=int, default=1024, help="open connections at most (then 503)")
    p.add_argument("--max-json-depth", type=int, default=64, help="deepest JSON nesting accepted in a body")
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
    p.add_argument(
        "--upstream-timeout-s", type=float, default=120.0, help="overall deadline of one upstream call (then 504)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    p.set_defaults(func=cmd_serve)


def _read_key(path: Path | None) -> str | None:
    if path is None:
        return None
    key = path.read_text().strip()
    if not key:
        raise ConfigError(f"{path} is empty: it must hold the API key")
    return key


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve import (
        InputLimits,
        LlavaRunner,
        ModelRunner,
        ServeConfig,
        VisionRunner,
        create_app,
    )
    from ..serve.app import ready_line
    from ..serve.http import run

    if args.upstream and args.lora:
        raise ConfigError("--lora has no effect in proxy mode (--upstream): the language model is not loaded")
    limits = InputLimits(
        max_body_bytes=int(args.max_body_mb * MB),
        max_image_pixels=args.max_image_pixels,
        allow_remote_images=args.allow_remote_images,
        remote_timeout_s=args.remote_timeout_s,
        max_remote_bytes=int(args.max_remote_mb * MB),
        max_json_depth=args.max_json_depth,
        body_timeout_s=args.body_timeout_s,
    )
    config = ServeConfig(
        served_names=tuple(args.served_model_name or [Path(str(args.base).rstrip("/")).name]),
        moderation_names=tuple(args.moderation_model_names),
        limits=limits,
        api_key=_read_key(args.api_key_file),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        request_timeout_s=args.request_timeout_s,
        default_max_tokens=args.max_tokens,
        max_tokens_limit=args.max_tokens_limit,
        upstream=args.upstream,
        upstream_model=args.upstream_model,
        upstream_api_key=_read_key(args.upstream_api_key_file),
        upstream_timeout_s=args.upstream_timeout_s,
    )
    runner: ModelRunner
    if args.upstream:
        runner = VisionRunner.load(
            args.base,
            args.safety,
            args.policy,
            device=args.device,
            dtype=args.dtype,
            allow_unverified_base=args.allow_unverified_base,
        )
    else:
        runner = LlavaRunner.load(
            args.base,
            args.safety,
            args.policy,
            lora=args.lora,
            device=args.device,
            dtype=args.dtype,
            max_prompt_tokens=args.max_prompt_tokens,
            allow_unverified_base=args.allow_unverified_base,
        )
    app = create_app(runner, config)
    url = f"http://{args.host}:{args.port}"
    ready = ready_line(config, url, "proxy" if args.upstream else "local")
    run(
        app,
        args.host,
        args.port,
        ready,
        header_timeout_s=args.header_timeout_s,
        keep_alive_s=args.keep_alive_s,
        max_connections=args.max_connections,
    )
    return 0
