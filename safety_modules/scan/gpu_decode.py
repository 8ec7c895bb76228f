"""JPEG decoding on the GPU (torchvision's nvJPEG), picked by the scan itself where it can run.

With ``gpu_decode="auto"``, a scan on CUDA with torchvision importable lets its workers pass plain
JPEGs through undecoded (after checking the header: format, mode, pixel cap, aspect ratio);
the main process decodes each batch's JPEGs with ``torchvision.io.decode_jpeg(device="cuda")``,
then resizes and crops them there. Everything else (PNG, WebP, CMYK, broken files, pad-to-square)
takes the CPU path. The resize is torch's antialiased bicubic, which differs from PIL's by under 0.3 grey levels
on average (tests/scan/test_pixels.py; more at sharp edges when enlarging), so scores move slightly; the
manifest's run entry records which path it took (``jpeg_decode``).
torchvision is not installed on the CPU machines the test suite runs on: there, this module's
resize is tested on the CPU against the PIL path, and the decode call itself is not exercised.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from ..gate.pixels import PixelSpec, output_size
from ..images import MAX_ASPECT_RATIO
from .items import Item, ItemError, load_bytes


def gpu_decode_available(setting: str, device: torch.device) -> bool:
    """Whether this scan decodes JPEGs on the GPU: ``setting`` "auto", a CUDA device, torchvision importable."""
    if setting not in ("auto", "off"):
        raise ConfigError(f"gpu_decode must be 'auto' or 'off', got {setting!r}")
    return setting == "auto" and device.type == "cuda" and importlib.util.find_spec("torchvision") is not None


def passthrough_jpeg(item: Item, spec: PixelSpec, max_pixels: int) -> bytes | None:
    """The item's bytes if the GPU can take it as is (a plain RGB/grey JPEG within the caps), else None.

    None sends the item down the CPU path, which also reports every kind of broken input.
    """
    if spec.pad_square:
        return None
    try:
        source = load_bytes(item)
        data = Path(source).read_bytes() if isinstance(source, str) else source
    except (ItemError, OSError):
        return None
    if data[:2] != b"\xff\xd8":
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            plain = img.format == "JPEG" and img.mode in ("RGB", "L")
    except Exception:  # noqa: BLE001  (any header problem: the CPU path names it)
        return None
    short, long_ = min(width, height), max(width, height)
    if not plain or width * height > max_pixels or long_ > short * MAX_ASPECT_RATIO:
        return None
    return data


def resize_crop(image: torch.Tensor, spec: PixelSpec) -> torch.Tensor:
    """uint8 (3, h, w) on any device -> uint8 (3, H, W) there, resized and cropped as `pixels.to_uint8`."""
    height, width = image.shape[-2:]
    new_w, new_h = output_size(width, height, spec)
    if (new_w, new_h) != (width, height):
        resized = torch.nn.functional.interpolate(
            image[None].float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
        )[0]
        image = resized.round_().clamp_(0, 255).to(torch.uint8)
    if spec.crop is not None:
        crop_h, crop_w = spec.crop
        top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
        image = image[:, top : top + crop_h, left : left + crop_w]
    return image


def decode_on_device(jpegs: list[bytes], spec: PixelSpec, device: torch.device) -> torch.Tensor:
    """A batch of JPEG bytes -> uint8 (k, 3, H, W) on ``device`` (nvJPEG decode, torch resize)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs]
    images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    return torch.stack([resize_crop(image, spec) for image in images])


def merge_rows(cpu_pixels: torch.Tensor, gpu_pixels: torch.Tensor, from_gpu: np.ndarray) -> torch.Tensor:
    """The batch's good rows in order: ``from_gpu`` (bool, one per good row) says which tensor each comes from."""
    merged = torch.empty((len(from_gpu), *gpu_pixels.shape[1:]), dtype=torch.uint8, device=gpu_pixels.device)
    mask = torch.from_numpy(from_gpu).to(gpu_pixels.device)
    merged[mask] = gpu_pixels
    merged[~mask] = cpu_pixels.to(gpu_pixels.device, non_blocking=True)
    return merged
