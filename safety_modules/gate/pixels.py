"""Images to uint8 model inputs on the CPU; rescale and normalisation on the device.

A scan worker reads, decodes, resizes and crops each image to a uint8 ``(3, H, W)`` array and
hands whole batches over; `normalize` then turns a uint8 batch into the model's input on the
device. Together they reproduce the CLIP image processor (resize the shortest side bicubic,
centre crop, rescale, normalise with the processor's own mean and std), read from the processor
itself (`PixelSpec.from_processor`).

Two shortcuts apply to large images only (``draft=True``): a JPEG is decoded at 1/2, 1/4 or
1/8 scale by the decoder itself (PIL draft mode), never below the size the resize needs, and a
resize that shrinks by 3x or more first reduces in integer steps (Pillow ``reducing_gap``). An
image no larger than twice the model's input takes the exact path either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ModelError
from ..images import DEFAULT_MAX_PIXELS, ImageDecodeError, bound_aspect, decode_image

# Pillow: shrinking by this factor or more goes through `Image.reduce` first (the docs call
# 3.0 indistinguishable from a plain resize in most cases).
REDUCING_GAP = 3.0


@dataclass(frozen=True)
class PixelSpec:
    """The image processor's geometry and normalisation, as plain values a worker can carry."""

    shortest_edge: int | None  # resize the short side to this (keeping the aspect ratio) ...
    resize_to: tuple[int, int] | None  # ... or to exactly (height, width)
    crop: tuple[int, int] | None  # centre crop (height, width), or None
    resample: int
    rescale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_square: bool = False  # LlavaImageProcessor(do_pad=True), LLaVA's `image_aspect_ratio: pad`: square first

    @classmethod
    def from_processor(cls, processor: Any) -> PixelSpec:
        """Read a CLIP-style image processor; anything this path cannot reproduce is refused by name."""
        # transformers' LlavaImageProcessor pads to a square before resizing (LLaVA's `expand2square`, how
        # original checkpoints with `image_aspect_ratio: pad` load); other processors' do_pad pads the output.
        pad_square = bool(getattr(processor, "do_pad", False))
        if pad_square and not type(processor).__name__.startswith("LlavaImageProcessor"):
            raise ModelError(f"{type(processor).__name__} pads its output (do_pad); the scan's uint8 path does not")
        size = dict(processor.size) if getattr(processor, "do_resize", True) else {}
        shortest = size.get("shortest_edge")
        exact = (size["height"], size["width"]) if size.get("height") and size.get("width") else None
        crop = None
        if getattr(processor, "do_center_crop", False):
            crop = (processor.crop_size["height"], processor.crop_size["width"])
        if crop is None and exact is None and not (pad_square and shortest):
            raise ModelError(f"the image processor gives no fixed output size (size={size}, no centre crop)")
        rescale = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0
        if getattr(processor, "do_normalize", True):
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        resample = int(getattr(processor, "resample", Image.Resampling.BICUBIC))
        return cls(shortest, exact, crop, resample, rescale, mean, std, pad_square)

    def target_short_side(self) -> int:
        """The short side the resize produces (what draft decoding must not go below)."""
        if self.resize_to is not None:
            return min(self.resize_to)
        return self.shortest_edge if self.shortest_edge else min(self.crop or (0, 0))


def decode(
    source: bytes | str | Path, spec: PixelSpec, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True
) -> Image.Image:
    """Decode to RGB with `images.decode_image` (same error kinds); large JPEGs at reduced scale if ``draft``."""

    def reduce_jpeg(img: Image.Image) -> None:
        if draft and img.format == "JPEG":
            _draft(img, spec)

    return decode_image(source, max_pixels, before_load=reduce_jpeg)


def _draft(img: Image.Image, spec: PixelSpec) -> None:
    """Ask the JPEG decoder for the smallest 1/2^k scale whose short side stays >= the resize target.

    The bicubic resize that follows then shrinks by less than 2x. A JPEG whose short side is under
    twice the target cannot be drafted and is decoded at full size.
    """
    width, height = img.size
    ratio = spec.target_short_side() / min(width, height)
    if ratio > 0.5:
        return
    img.draft(img.mode, (math.ceil(width * ratio), math.ceil(height * ratio)))


def expand_to_square(img: Image.Image, spec: PixelSpec) -> Image.Image:
    """Original LLaVA's pad-to-square: the image centred on a square of the mean colour."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    fill = tuple(int(m * 255) for m in spec.mean)
    square = Image.new("RGB", (side, side), fill)
    square.paste(img, ((side - width) // 2, (side - height) // 2))
    return square


def output_size(width: int, height: int, spec: PixelSpec) -> tuple[int, int]:
    """(width, height) after the processor's resize, before its crop."""
    if spec.resize_to is not None:
        return spec.resize_to[1], spec.resize_to[0]
    if not spec.shortest_edge:
        return width, height
    # transformers' get_resize_output_image_size: the long side is truncated, not rounded.
    short, long_ = min(width, height), max(width, height)
    new_long = int(spec.shortest_edge * long_ / short)
    return (spec.shortest_edge, new_long) if width <= height else (new_long, spec.shortest_edge)


def to_uint8(img: Image.Image, spec: PixelSpec, draft: bool = True) -> np.ndarray:
    """Resize and crop an RGB image as the processor does; a uint8 ``(3, H, W)`` array."""
    if spec.pad_square:
        img = expand_to_square(img, spec)
    width, height = img.size
    new_w, new_h = output_size(width, height, spec)
    if (new_w, new_h) != (width, height):
        gap = REDUCING_GAP if draft else None
        img = img.resize((new_w, new_h), spec.resample, reducing_gap=gap)
    if spec.crop is not None:
        crop_h, crop_w = spec.crop
        top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
        if top < 0 or left < 0:
            raise ValueError(f"resized image {new_w}x{new_h} is smaller than the crop {crop_w}x{crop_h}")
        img = img.crop((left, top, left + crop_w, top + crop_h))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def prepare_bytes(
    source: bytes | str, spec: PixelSpec, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True
) -> tuple[np.ndarray | None, tuple[str, str] | None]:
    """Decode, resize one image: ``(uint8 (3, H, W), None)`` or ``(None, (kind, message))``."""
    try:
        return to_uint8(bound_aspect(decode(source, spec, max_pixels, draft)), spec, draft), None
    except ImageDecodeError as exc:
        return None, (exc.kind, str(exc).split(": ", 1)[-1])
    except Exception as exc:  # one odd file must not stop a corpus-wide scan; it is recorded, not hidden
        return None, ("preprocess_failed", f"{type(exc).__name__}: {exc}")


def normalize(pixels: torch.Tensor, spec: PixelSpec, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` on any device -> the model's input there: ``(x * rescale - mean) / std``.

    Folded into one multiply and one subtraction in float32 (``x * (rescale / std) - mean / std``),
    which differs from the processor's three steps by rounding only (below 1e-6); then cast to ``dtype``.
    """
    mean = torch.tensor(spec.mean, dtype=torch.float64)
    std = torch.tensor(spec.std, dtype=torch.float64)
    scale = (spec.rescale / std).to(torch.float32).view(1, 3, 1, 1).to(pixels.device)
    shift = (mean / std).to(torch.float32).view(1, 3, 1, 1).to(pixels.device)
    values = pixels.to(torch.float32).mul_(scale).sub_(shift)
    return values.to(dtype)
