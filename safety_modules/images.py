"""Decoding images from untrusted sources: one function, clear error kinds, unusual formats normalised;
grouping identical images of a batch by their content (so each distinct image is processed once); and the
blank image that stands in for "no image".

Valid but unusual inputs are decoded, not rejected: CMYK, 16-bit, palette with
transparency, RGBA/LA (composited on white), animated files (first frame), and
files whose extension lies (the content decides). Broken inputs raise
`ImageDecodeError` with a ``kind``: ``empty``, ``not_an_image``, ``truncated``,
``too_large`` (decompression-bomb guard) or ``unreadable``.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

# 50 M pixels: well above any training image, far below what exhausts memory.
DEFAULT_MAX_PIXELS = 50_000_000
# CLIP's processor resizes the short side to 336 px and keeps the centre square, so only
# the central part of a very long image is ever seen. Cropping such images to this aspect
# ratio first gives the same view without resizing, say, a 1 x 20000 strip to 336 x 6.7M px.
MAX_ASPECT_RATIO = 8.0
BLANK_IMAGE_SIZE = (1000, 1000)


class ImageDecodeError(InputError):
    """An image could not be decoded. ``kind`` names the failure for counting and reports."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def decode_image(
    source: bytes | str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    before_load: Callable[[Image.Image], None] | None = None,
) -> Image.Image:
    """Decode bytes or a file into an RGB PIL image (first frame), or raise `ImageDecodeError`.

    ``before_load`` sees the opened image after the size check and before its pixels are decoded (the
    scan uses it to ask the JPEG decoder for a reduced scale with ``Image.draft``).

    A cut-off file raises ``truncated`` as long as PIL's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES``
    keeps its default (False). PIL has no per-call form of that switch, so this function never writes it:
    an application that sets it has chosen lenient decoding for the whole process, and gets it here too.
    """
    if isinstance(source, (str, Path)):
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ImageDecodeError("unreadable", f"{source}: {exc}") from None
    else:
        data = bytes(source)
    if not data:
        raise ImageDecodeError("empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError("too_large", f"{width}x{height} pixels exceeds the cap of {max_pixels:,}")
            img.seek(0)
            if before_load is not None:
                before_load(img)
            img.load()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not_an_image", "bytes are not a known image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too_large", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        message = str(exc)
        kind = "truncated" if "truncated" in message.lower() or isinstance(exc, EOFError) else "unreadable"
        raise ImageDecodeError(kind, message) from None
    return to_rgb(img)


def blank_image() -> Image.Image:
    """The 1000x1000 all-white RGB image that stands in for "no image": UnsafeConcepts pairs it with its
    text-only prompts, and the server scores and answers text-only requests with it."""
    return Image.new("RGB", BLANK_IMAGE_SIZE, (255, 255, 255))


def to_rgb(img: Image.Image) -> Image.Image:
    """Normalise any PIL mode to 8-bit RGB; transparency is composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        top = array.max() if array.size and array.max() > 255 else 255.0
        img = Image.fromarray((array / max(top, 1.0) * 255.0).clip(0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        span = float(array.max() - array.min()) or 1.0
        img = Image.fromarray(((array - array.min()) / span * 255.0).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_images(images: Any) -> list[Any]:
    """One image or a list of them as a list; file paths are decoded (`decode_image`), other items kept."""
    items = images if isinstance(images, (list, tuple)) else [images]
    return [decode_image(x) if isinstance(x, (str, Path)) else x for x in items]


def group_identical(images: Sequence[Any]) -> tuple[list[int], list[int]]:
    """Group identical images of a batch by content: (``firsts``, ``inverse``) as `group_labels` gives them.

    PIL images and numpy arrays are compared by a BLAKE2b digest of their decoded bytes with
    their mode/dtype and size/shape, computed on the CPU before any preprocessing; other items
    are never merged. Only images that could be equal are hashed: in a batch of one, or for an
    image whose mode and size no other image shares, nothing is hashed; the same object given
    twice is hashed once.
    """
    keys: list[Any] = [_cheap_key(img, i) for i, img in enumerate(images)]
    counts = Counter(keys)
    digests: dict[int, bytes] = {}  # by object id
    for i, img in enumerate(images):
        if counts[keys[i]] > 1:
            if id(img) not in digests:
                digests[id(img)] = _content_digest(img)
            keys[i] = (keys[i], digests[id(img)])
    return group_labels(keys)


def group_labels(labels: Sequence[Hashable]) -> tuple[list[int], list[int]]:
    """(``firsts``, ``inverse``) for per-sample group labels (equal labels = identical images).

    ``firsts``: the index of each group's first sample, in batch order; ``inverse[i]``: the
    position in ``firsts`` of sample ``i``'s group. A pass over the labels, no sorting.
    """
    firsts: list[int] = []
    slot: dict[Hashable, int] = {}
    inverse = []
    for i, label in enumerate(labels):
        if label not in slot:
            slot[label] = len(firsts)
            firsts.append(i)
        inverse.append(slot[label])
    return firsts, inverse


def _cheap_key(img: Any, index: int) -> tuple:
    """What two equal images must share (mode and size, dtype and shape); unknown kinds stay apart."""
    if isinstance(img, Image.Image):
        return ("pil", img.mode, img.size)
    if isinstance(img, np.ndarray):
        return ("array", str(img.dtype), img.shape)
    return ("other", index)


def _content_digest(img: Image.Image | np.ndarray) -> bytes:
    data = img.tobytes() if isinstance(img, Image.Image) else np.ascontiguousarray(img).tobytes()
    return hashlib.blake2b(data, digest_size=16).digest()


def bound_aspect(img: Image.Image, max_ratio: float = MAX_ASPECT_RATIO) -> Image.Image:
    """Centre-crop the long side so that long/short <= ``max_ratio`` (a no-op for ordinary images)."""
    width, height = img.size
    short, long_ = min(width, height), max(width, height)
    if long_ <= short * max_ratio:
        return img
    keep = max(1, int(short * max_ratio))
    if width > height:
        left = (width - keep) // 2
        return img.crop((left, 0, left + keep, height))
    top = (height - keep) // 2
    return img.crop((0, top, width, top + keep))
