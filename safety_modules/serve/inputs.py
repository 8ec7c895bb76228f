"""Reading untrusted request input: capped request bodies, data URLs, optional remote images."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image
from starlette.requests import Request

from ..images import ImageDecodeError, decode_image
from .protocol import ApiError, bad_request


@dataclass(frozen=True)
class InputLimits:
    """Caps on what one request may bring in."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 25_000_000
    allow_remote_images: bool = False
    remote_timeout_s: float = 10.0
    max_remote_bytes: int = 8 * 1024 * 1024


async def read_json(request: Request, limits: InputLimits) -> Any:
    """The request body as JSON, refusing (413) bodies over the cap before reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise ApiError(
            413,
            f"request body of {int(declared):,} bytes exceeds the cap of {limits.max_body_bytes:,}",
            code="body_too_large",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:  # a chunked body without a length: stop reading at the cap
            raise ApiError(
                413, f"request body exceeds the cap of {limits.max_body_bytes:,} bytes", code="body_too_large"
            )
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None


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
