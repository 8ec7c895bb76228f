"""The real LLaMA / Vicuna tokenizer, rebuilt at test time from the MIT npm package ``llama-tokenizer-js@1.2.2``.

The package (https://www.npmjs.com/package/llama-tokenizer-js, fetched with ``npm pack`` and checked
against its published sha512) embeds LLaMA's 32,000-token vocabulary and its 61,249 merges in priority
order, and its source lists its own encoder's test vectors (``testCase("grabbed", [1, 2646, 1327, 287])``).
`rebuild_tokenizer_model` writes a sentencepiece ``tokenizer.model`` from them (BPE, byte fallback,
split digits, dummy prefix, no whitespace folding; a merged piece scores minus its merge rank), which is
what an original LLaVA checkpoint ships. ``LLAMA_TOKENIZER_JS_TGZ`` may point to the downloaded tarball
(offline runs); without it and without npm or the registry the tests that need it skip, saying why.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

PACKAGE = "llama-tokenizer-js@1.2.2"
SHA512_B64 = "Wmth393dc3odWU3IzARJ3r2oIfWgw9GdJ5Gm+hGhfECNO18UHLRqEFSf511jn4E9KcQGzuuKw4Wl08pHAemLAw=="


def fetch_llama_tokenizer_js(workdir: Path) -> str:
    """The package's ``llama-tokenizer.js`` source (downloaded with ``npm pack`` unless the env var names a tarball)."""
    tarball = os.environ.get("LLAMA_TOKENIZER_JS_TGZ")
    if not tarball:
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip(f"npm is not installed: cannot fetch {PACKAGE} (or set LLAMA_TOKENIZER_JS_TGZ)")
        try:
            done = subprocess.run(
                [npm, "pack", PACKAGE, "--silent"],
                cwd=workdir,
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm pack {PACKAGE} timed out (no registry?); or set LLAMA_TOKENIZER_JS_TGZ")
        if done.returncode != 0:
            pytest.skip(f"npm pack {PACKAGE} failed: {done.stderr.strip()[-300:]}")
        tarball = str(workdir / done.stdout.strip().splitlines()[-1])
    data = Path(tarball).read_bytes()
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != SHA512_B64:
        raise AssertionError(f"{tarball} is not {PACKAGE}: sha512 {digest} != {SHA512_B64}")
    with tarfile.open(tarball) as archive:
        member = archive.extractfile("package/llama-tokenizer.js")
        assert member is not None
        return member.read().decode("utf-8")


def vocab_and_merges(js: str) -> tuple[list[str], list[tuple[str, str]]]:
    vocab_b64 = re.search(r"llama_vocab_base64\s*=\s*['\"`]([A-Za-z0-9+/=]+)", js).group(1)
    merges_b64 = re.search(r"llama_merges_binary\s*=\s*['\"`]([A-Za-z0-9+/=]+)", js).group(1)
    vocab = base64.b64decode(vocab_b64).decode("utf-8").split("\n")
    raw = base64.b64decode(merges_b64)
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)  # pairs of uint16 vocabulary ids, highest priority first
    return vocab, [(vocab[ids[i]], vocab[ids[i + 1]]) for i in range(0, len(ids), 2)]


def rebuild_tokenizer_model(js: str, path: Path) -> Path:
    """Write LLaMA's ``tokenizer.model`` (sentencepiece BPE) from the package's vocabulary and merges."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    vocab, merges = vocab_and_merges(js)
    rank: dict[str, int] = {}
    for r, (left, right) in enumerate(merges):
        rank.setdefault(left + right, r)
    model = sp_pb2.ModelProto()
    spec = model.trainer_spec
    spec.model_type, spec.vocab_size = sp_pb2.TrainerSpec.BPE, len(vocab)
    spec.byte_fallback, spec.split_digits = True, True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    norm = model.normalizer_spec
    norm.name, norm.add_dummy_prefix, norm.escape_whitespaces = "identity", True, True
    norm.remove_extra_whitespaces = False
    kinds = sp_pb2.ModelProto.SentencePiece
    for i, text in enumerate(vocab):
        piece = model.pieces.add()
        piece.piece = text
        if i == 0:
            piece.type = kinds.UNKNOWN
        elif i in (1, 2):
            piece.type = kinds.CONTROL
        elif re.fullmatch(r"<0x[0-9A-F]{2}>", text):
            piece.type = kinds.BYTE
        else:  # single characters never come from a merge; their score does not matter
            piece.type, piece.score = kinds.NORMAL, -float(rank.get(text, len(merges) + i))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def js_test_vectors(js: str) -> list[tuple[str, list[int]]]:
    """The package's own encoder tests: ``testCase("text", [ids])`` (JS string literals, JSON-compatible here)."""
    vectors = []
    for quote, body, ids in re.findall(r"testCase\((\"|')((?:\\.|(?!\1).)*)\1,\s*\[([\d,\s]+)\]\)", js, re.DOTALL):
        text = json.loads('"' + (body.replace('"', '\\"') if quote == "'" else body).replace("\t", "\\t") + '"')
        vectors.append((text, [int(x) for x in ids.split(",") if x.strip()]))
    return vectors
