"""What can be wrong with a checkpoint, and reading safetensors files so that the error names the file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import ModelError


class CheckpointError(ModelError):
    """A checkpoint folder (safety modules, LoRA adapter or base) is missing, unreadable or does not fit its config."""


class IncompatibleBaseError(ModelError):
    """Safety modules were trained for another base model than the one they are attached to (or say for none)."""


@contextmanager
def from_hub(what: str) -> Iterator[None]:
    """Hub downloads inside the block fail with one `CheckpointError` that names ``what`` (huggingface_hub's
    own errors, offline or for a missing repository, name neither the model nor what to do)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except (OSError, HfHubHTTPError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"{what} is not a local folder and could not be fetched from the Hugging Face Hub "
            f"(offline, or no such repository?): {reason}"
        ) from None


def check_safetensors(file: str | Path) -> None:
    """Raise `CheckpointError` naming ``file`` unless its safetensors header reads (only the header is read).

    safetensors checks there that the header is complete and that the data it describes covers the file,
    so an empty, truncated or garbage file (or a Git LFS pointer) is caught here in one line, not as the
    ``SafetensorError`` traceback it gives later without the file's name.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as reader:
            reader.keys()
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from None


def load_safetensors(file: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``file`` on the CPU, each in its own storage (see below); a `CheckpointError` names a bad file.

    ``safetensors.torch.load_file`` returns views into one buffer that starts after the header, so most
    tensors are not 64-byte aligned; with one thread, CPU kernels then take other code paths than for the
    aligned tensors of a model built in memory and give results that differ in the last bit. A copy per
    tensor gives a reloaded model the same numbers as the one that was saved.
    """
    from safetensors.torch import load_file

    check_safetensors(file)
    return {name: tensor.clone() for name, tensor in load_file(str(file), device="cpu").items()}
