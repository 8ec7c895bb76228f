"""`safevlm assess` decodes as `scan` and `generate` do: the project's decoder, its pixel cap, the placeholder check."""

from __future__ import annotations

import io
import struct
import zlib

import pytest

from .conftest import cli, one_line_error


def gray_png(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of zeros, compressed row by row (a 15000 x 15000 one is ~200 KB on disk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture()
def hostile(tmp_path, photos):
    """Each hostile image by name, written to a file."""
    jpeg = io.BytesIO()
    photos[0].save(jpeg, "JPEG")
    files = {
        "truncated JPEG": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "decompression bomb": gray_png(15000, 15000),  # 225 Mpx: PIL's own bomb limit is 179 Mpx
        "81 Mpx": gray_png(9000, 9000),  # under PIL's limit, over the 50 Mpx cap of scan and generate
        "text": b"not an image at all",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / (name.replace(" ", "_") + ".png")
        paths[name].write_bytes(data)
    paths["directory"] = tmp_path / "a_folder.png"
    paths["directory"].mkdir()
    return paths


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "name, fragment",
    [
        ("directory", "unreadable"),
        ("truncated JPEG", "truncated"),
        ("decompression bomb", "too_large"),
        ("81 Mpx", "exceeds the cap of 50,000,000"),
        ("text", "not_an_image"),
    ],
)
def test_broken_images_are_one_line_errors_naming_the_file(name, fragment, hostile, tiny_dir, photo_file, capsys):
    rc, err = cli(capsys, "assess", photo_file, hostile[name], "--base", tiny_dir)
    one_line_error(rc, err, str(hostile[name]), fragment)


def test_the_image_placeholder_in_the_prompt_is_refused(tiny_dir, photo_file, capsys):
    rc, err = cli(capsys, "assess", photo_file, "--base", tiny_dir, "--prompt", "what is <image> here?")
    one_line_error(rc, err, "image placeholder '<image>'")
    rc, err = cli(capsys, "assess", photo_file, "--base", tiny_dir, "--prompt", "what is here?")
    assert rc == 0, err
