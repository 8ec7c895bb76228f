"""The scan's uint8 path reproduces the CLIP image processor; draft decoding stays close for large JPEGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from safety_modules.gate.pixels import PixelSpec, decode, normalize, to_uint8
from safety_modules.images import bound_aspect, decode_image

from ..scan_corpus import encode, unusual_images

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def clip_processor(**kw):
    from transformers import (
        CLIPImageProcessor,  # the PIL backend here (no torchvision); torchvision's on GPU boxes
    )

    return CLIPImageProcessor(
        **{
            "size": {"shortest_edge": 336},
            "crop_size": {"height": 336, "width": 336},
            "image_mean": MEAN,
            "image_std": STD,
            **kw,
        }
    )


def ours(data: bytes, processor, draft: bool = True) -> torch.Tensor:
    spec = PixelSpec.from_processor(processor)
    array = to_uint8(bound_aspect(decode(data, spec, draft=draft)), spec, draft)
    return normalize(torch.from_numpy(array.copy())[None], spec, torch.float32)[0]


def theirs(data: bytes, processor) -> torch.Tensor:
    return processor(images=[bound_aspect(decode_image(data))], return_tensors="pt")["pixel_values"][0]


def photo_jpegs(photos) -> dict[str, bytes]:
    """Real photos as JPEGs of web sizes (short side under 2 x 336, so never drafted): landscape, portrait,
    square, smaller than the crop, a long side over 1000 px."""
    sizes = [(500, 375), (375, 500), (640, 480), (512, 512), (300, 200), (1200, 600)]
    return {
        f"{n}_{w}x{h}.jpg": encode(photo.resize((w, h)), "JPEG", quality=90)
        for n, photo in enumerate(photos)
        for w, h in sizes
    }


@pytest.mark.parametrize("mean_std", ["clip", "half"])
def test_uint8_path_matches_the_clip_image_processor(photos, mean_std):
    kw = {} if mean_std == "clip" else {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    processor = clip_processor(**kw)
    files = {**photo_jpegs(photos), **unusual_images(), "photo.png": encode(photos[0], "PNG")}
    for name, data in files.items():
        torch.testing.assert_close(ours(data, processor), theirs(data, processor), atol=1e-6, rtol=0, msg=name)


def test_pad_to_square_matches_original_llava(photos):
    """``image_aspect_ratio: pad`` loads as ``LlavaImageProcessor(do_pad=True)``: LLaVA's own expand2square
    (the llava package is the oracle) then the CLIP steps."""
    from llava.mm_utils import expand2square
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    clip = clip_processor()
    padding = LlavaImageProcessorPil(
        size=clip.size, crop_size=clip.crop_size, image_mean=MEAN, image_std=STD, do_pad=True
    )
    for photo in photos:
        for size in [(500, 300), (300, 500)]:
            data = encode(photo.resize(size), "JPEG")
            square = expand2square(decode_image(data), tuple(int(m * 255) for m in MEAN))
            expected = clip(images=[square], return_tensors="pt")["pixel_values"][0]
            torch.testing.assert_close(ours(data, padding), expected, atol=1e-6, rtol=0)
            torch.testing.assert_close(theirs(data, padding), expected, atol=1e-6, rtol=0)


def test_processor_options_the_path_cannot_follow_are_refused():
    with pytest.raises(ValueError, match="no fixed output size"):
        PixelSpec.from_processor(clip_processor(do_center_crop=False))
    with pytest.raises(ValueError, match="pads its output"):
        PixelSpec.from_processor(clip_processor(do_pad=True, pad_size={"height": 400, "width": 400}))


def test_draft_decodes_large_jpegs_near_the_target_and_stays_close(photos):
    processor = clip_processor()
    spec = PixelSpec.from_processor(processor)
    data = encode(photos[1].resize((2000, 1500), Image.BICUBIC), "JPEG", quality=90)
    drafted = decode(data, spec, draft=True)
    assert drafted.size == (500, 375)  # 1/4 scale: the smallest whose short side is still >= 336
    assert decode(data, spec, draft=False).size == (2000, 1500)
    close, exact = ours(data, processor, draft=True), theirs(data, processor)
    assert (close - exact).abs().mean() < 0.02  # about 1.3 grey levels on average (normalised units / std)
    torch.testing.assert_close(ours(data, processor, draft=False), exact, atol=1e-6, rtol=0)
    # Below twice the target, draft changes nothing; from there on, the 1/2 scale.
    assert decode(encode(photos[1].resize((1024, 671)), "JPEG"), spec, draft=True).size == (1024, 671)
    assert decode(encode(photos[1].resize((1024, 683)), "JPEG"), spec, draft=True).size == (512, 342)


def test_broken_input_keeps_its_error_kind():
    from safety_modules.images import ImageDecodeError

    spec = PixelSpec.from_processor(clip_processor())
    good = encode(Image.new("RGB", (700, 700)), "JPEG")
    with pytest.raises(ImageDecodeError) as info:
        decode(good[: len(good) // 2], spec)
    assert info.value.kind == "truncated"
    with pytest.raises(ImageDecodeError) as info:
        decode(io.BytesIO(b"").getvalue(), spec)
    assert info.value.kind == "empty"
    assert np.asarray(decode(good, spec)).shape == (350, 350, 3)  # drafted to 1/2


def test_gpu_decode_resize_matches_the_pil_path_within_a_grey_level(photos):
    """The GPU path's resize and crop (torch, antialiased bicubic), run here on the CPU on PIL-decoded pixels."""
    from safety_modules.scan.gpu_decode import resize_crop

    spec = PixelSpec.from_processor(clip_processor())
    for photo in photos:
        for size in [(500, 375), (375, 500), (300, 200), (1600, 1200)]:
            image = photo.resize(size)
            tensor = torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())
            ours_ = resize_crop(tensor, spec).int()
            pil = torch.from_numpy(to_uint8(image, spec, draft=False).copy()).int()
            assert ours_.shape == pil.shape == (3, 336, 336)
            # Measured: 0.11-0.19 grey levels on average; up to 9 at sharp edges when enlarging (PIL rounds and
            # clips between its two passes, torch does not).
            assert (ours_ - pil).abs().float().mean() < 0.3 and (ours_ - pil).abs().max() <= 12, size


def test_only_plain_jpegs_are_passed_to_the_gpu(tmp_path, photos):
    from safety_modules.scan.gpu_decode import gpu_decode_available, passthrough_jpeg
    from safety_modules.scan.readers import Item

    spec = PixelSpec.from_processor(clip_processor())
    files = {
        "plain.jpg": encode(photos[0], "JPEG"),
        "grey.jpg": encode(photos[0].convert("L"), "JPEG"),
        **{k: v for k, v in unusual_images().items() if k in ("cmyk.jpg", "lying_extension.jpg")},
        "strip.jpg": encode(photos[0].resize((2000, 100)), "JPEG"),
        "empty.jpg": b"",
    }
    passed = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        passed[name] = passthrough_jpeg(Item("t", name, {"file": str(tmp_path / name)}), spec, 50_000_000) is not None
    assert passed == {
        "plain.jpg": True,
        "grey.jpg": True,
        "cmyk.jpg": False,
        "lying_extension.jpg": False,
        "strip.jpg": False,
        "empty.jpg": False,
    }
    assert not gpu_decode_available("auto", torch.device("cpu")) and not gpu_decode_available(
        "off", torch.device("cpu")
    )
