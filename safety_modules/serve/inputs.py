"""Reading untrusted request input: capped request bodies, data URLs, optional remote images."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ..images import ImageDecodeError, decode_image
from .protocol import ApiError, bad_request


@dataclass(frozen=True)
class InputLimits:
    """Caps on what one request may bring in."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_json_depth: int = 64
    body_timeout_s: float = 30.0
    max_image_pixels: int = 25_000_000
    allow_remote_images: bool = False
    remote_timeout_s: float = 10.0
    max_remote_bytes: int = 8 * 1024 * 1024


async def read_json(request: Request, limits: InputLimits) -> Any:
    """The request body as JSON: 413 over the size cap (before reading it whole), 408 when it does not
    arrive within ``body_timeout_s``, 400 when nested deeper than ``max_json_depth`` (checked before
    parsing) or not JSON. A client leaving mid-body raises starlette's ``ClientDisconnect``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise ApiError(
            413,
            f"request body of {int(declared):,} bytes exceeds the cap of {limits.max_body_bytes:,}",
            code="body_too_large",
        )
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            data = await _read_capped(request, limits.max_body_bytes)
    except TimeoutError:
        raise ApiError(
            408, f"the request body did not arrive within {limits.body_timeout_s:g} s", code="body_timeout"
        ) from None
    return await run_in_threadpool(parse_json, data, limits.max_json_depth)


def parse_json(data: bytes, max_depth: int) -> Any:
    """JSON text -> value, refusing (400) nesting deeper than ``max_depth`` before parsing."""
    depth = json_depth(data)
    if depth > max_depth:
        raise bad_request(f"the request body is nested {depth} levels deep; at most {max_depth}", code="json_too_deep")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None


async def _read_capped(request: Request, cap: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:  # a chunked body without a length: stop reading at the cap
            raise ApiError(413, f"request body exceeds the cap of {cap:,} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a string literal, escapes included (unrolled: fast)


def json_depth(data: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text, without parsing it (strings are cut out first,
    so brackets inside them do not count); vectorised, so a body at the size cap costs milliseconds."""
    codes = np.frombuffer(JSON_STRING.sub(b'""', data), dtype=np.uint8)
    opens = (codes == ord("[")) | (codes == ord("{"))
    closes = (codes == ord("]")) | (codes == ord("}"))
    steps = opens.astype(np.int32) - closes.astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


async def fetch_image_bytes(url: str, limits: InputLimits, client: httpx.AsyncClient | None) -> bytes:
    """The bytes behind an image URL: a ``data:`` URL, or ``http(s)`` when remote images are enabled."""
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise bad_request(
                "a data URL must look like data:image/...;base64,<data>", "image_url", "invalid_image_url"
            )
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise bad_request(f"invalid base64 in the image data URL: {exc}", "image_url", "invalid_base64") from None
    if url.startswith(("http://", "https://")):
        if not limits.allow_remote_images or client is None:
            raise bad_request(
                "remote image URLs are disabled on this server (start it with --allow-remote-images); "
                "send the image as a data URL",
                "image_url",
                "remote_images_disabled",
            )
        return await _download(url, limits, client)
    raise bad_request(
        "image_url must be a data: URL (or http(s) when remote images are enabled)", "image_url", "invalid_image_url"
    )


async def _download(url: str, limits: InputLimits, client: httpx.AsyncClient) -> bytes:
    try:
        async with client.stream("GET", url, timeout=limits.remote_timeout_s, follow_redirects=True) as response:
            if response.status_code != 200:
                raise bad_request(
                    f"fetching the image failed: HTTP {response.status_code}", "image_url", "image_fetch_failed"
                )
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data.extend(chunk)
                if len(data) > limits.max_remote_bytes:
                    raise bad_request(
                        f"the remote image exceeds the cap of {limits.max_remote_bytes:,} bytes",
                        "image_url",
                        "image_too_large",
                    )
            return bytes(data)
    except httpx.HTTPError as exc:
        raise bad_request(
            f"fetching the image failed: {type(exc).__name__}: {exc}", "image_url", "image_fetch_failed"
        ) from None


def decode(data: bytes, limits: InputLimits) -> Image.Image:
    """Bytes -> RGB image, or a 400 naming the problem (not an image, truncated, too many pixels, ...)."""
    try:
        return decode_image(data, max_pixels=limits.max_image_pixels)
    except ImageDecodeError as exc:
        raise bad_request(f"the image could not be used: {exc}", "image_url", f"image_{exc.kind}") from None
