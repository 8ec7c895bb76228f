"""The scan path: vision-only loading, parity with SafeLlava, broken and unusual input, resumption rules."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from safety_modules import IncompatibleBaseError, SafeLlava
from safety_modules.modeling import base_fingerprint
from safety_modules.modeling.llava import load_base, load_vision_parts
from safety_modules.scan import ScanSettings, VisionScorer, read_parts, run_scan
from safety_modules.taxonomy import Taxonomy

from ..scan_corpus import (
    _rgb,
    add_symlink,
    broken_images,
    encode,
    plain_images,
    unusual_images,
    wds_samples,
    write_folder,
    write_tar,
)


def settings(tiny_dir, safety_dir, **kw) -> ScanSettings:
    return ScanSettings(base=str(tiny_dir), safety=str(safety_dir), **{"workers": 0, "batch_size": 4, **kw})


def prob_columns(table: pa.Table) -> np.ndarray:
    names = [c for c in table.column_names if c.startswith("p_")]
    return np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in names], axis=1).astype(np.float64)


def sharded_copy_with_garbage_lm(tiny_dir, out):
    """The tiny base re-saved in two shards, the language model's shard overwritten with garbage."""
    shutil.copytree(tiny_dir, out, ignore=shutil.ignore_patterns("*.safetensors"))
    state = load_file(str(tiny_dir / "model.safetensors"))
    lm = {k: v for k, v in state.items() if "language_model" in k or k.startswith("lm_head")}
    vision = {k: v for k, v in state.items() if k not in lm}
    assert lm and vision
    save_file(vision, str(out / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    (out / "model-00002-of-00002.safetensors").write_bytes(b"\x00garbage: the language model is not here" * 100)
    weight_map = {k: "model-00001-of-00002.safetensors" for k in vision}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in lm})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out, sum(v.numel() for v in lm.values())


def test_scan_never_loads_the_language_model_and_matches_assess(tiny_dir, safety_dir, tmp_path, photos):
    folder, lm_params = sharded_copy_with_garbage_lm(tiny_dir, tmp_path / "sharded")
    with pytest.raises(Exception):  # noqa: B017 - whichever error the loader raises on a corrupt shard
        load_base(folder)  # the full loader reads the LM shard, so the garbage would be noticed
    scorer = VisionScorer.from_pretrained(folder, safety_dir)
    held = {n: p.numel() for module in (scorer.vision_tower, scorer.safety) for n, p in module.named_parameters()}
    assert not any("language_model" in n or "lm_head" in n or "embed_tokens" in n for n in held)
    full = SafeLlava.from_pretrained(tiny_dir, safety_dir)
    tower = full.base.model.vision_tower
    # The scan holds the vision tower and the safety modules, nothing of the language model.
    vision_params = sum(p.numel() for p in tower.parameters())
    assert sum(held.values()) == vision_params + sum(p.numel() for p in full.safety.parameters())
    assert lm_params > 0.5 * sum(p.numel() for p in full.base.parameters())  # most of the base was left out
    # LLaVA reads layer -2: the last encoder layer is never run, and the tower is left whole.
    layers = scorer.vision_tower.encoder.layers
    ran = []
    hook = layers[-1].register_forward_hook(lambda *_: ran.append(1))

    pixels = torch.stack([prepare_image(scorer, img) for img in photos])
    level_probs, type_probs = scorer.score(pixels)
    hook.remove()
    assert not ran and len(layers) == len(tower.encoder.layers)
    expected = full.assess(photos)
    np.testing.assert_allclose(level_probs, expected.level_probs.numpy(), atol=1e-6)
    np.testing.assert_allclose(type_probs, expected.type_probs.numpy(), atol=1e-6)


def prepare_image(scorer, image):
    return scorer.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]


def test_original_layout_vision_parts(tiny_dir, tmp_path):
    """An original-layout checkpoint (mm_projector, separate CLIP folder) gives the same vision parts."""
    from transformers import AutoTokenizer, LlavaConfig

    hf = load_vision_parts(tiny_dir)
    tower_dir = tmp_path / "clip"
    hf.vision_tower.save_pretrained(tower_dir)
    hf.image_processor.save_pretrained(tower_dir)
    orig = tmp_path / "orig"
    orig.mkdir()
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(orig)
    config = LlavaConfig.from_pretrained(tiny_dir)
    raw = {
        **config.text_config.to_dict(),
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "mm_vision_tower": str(tower_dir),
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
    }
    (orig / "config.json").write_text(json.dumps(raw))
    state = load_file(str(tiny_dir / "model.safetensors"))
    converted = {}
    for key, value in state.items():
        if key.startswith("multi_modal_projector.linear_1."):
            converted["model.mm_projector.0." + key.split(".")[-1]] = value
        elif key.startswith("multi_modal_projector.linear_2."):
            converted["model.mm_projector.2." + key.split(".")[-1]] = value
        elif key.startswith("language_model.lm_head") or key.startswith("lm_head"):
            converted["lm_head.weight"] = value
        elif key.startswith("language_model."):
            converted["model." + key[len("language_model.") :].removeprefix("model.")] = value
    save_file(converted, str(orig / "model.safetensors"), metadata={"format": "pt"})

    parts = load_vision_parts(orig)
    fingerprint = base_fingerprint(parts.config, parts.projector)
    assert fingerprint == base_fingerprint(hf.config, hf.projector)
    full, _ = load_base(orig)  # the refactored original-layout loader still builds the whole model
    assert base_fingerprint(full.config, full.model.multi_modal_projector) == fingerprint
    pixels = torch.randn(1, 3, 336, 336)
    with torch.no_grad():
        a = parts.vision_tower(pixels).last_hidden_state
        b = hf.vision_tower(pixels).last_hidden_state
    torch.testing.assert_close(a, b)


def test_modules_for_another_base_are_refused(tmp_path, safety_dir):
    from safety_modules.testing.tiny import make_tiny

    other = make_tiny(tmp_path / "other", seed=1)
    with pytest.raises(IncompatibleBaseError):
        VisionScorer.from_pretrained(other, safety_dir)


def test_broken_and_unusual_folder_corpus(tiny_dir, safety_dir, tmp_path, capsys):
    unusual = unusual_images()
    broken = broken_images()
    files = {**plain_images(2), **unusual, **{name: data for name, (data, _) in broken.items()}}
    corpus = write_folder(tmp_path / "corpus", files)
    manifest = run_scan(corpus, tmp_path / "out", settings(tiny_dir, safety_dir, workers=1, part_size=5))
    table = read_parts(tmp_path / "out")
    rows = {r["id"]: r for r in table.to_pylist()}
    assert sorted(rows) == sorted(f"corpus:{name}" for name in files)  # one row per item
    assert table.column("index").to_pylist() == list(range(len(files)))
    for name, (_, kind) in broken.items():
        row = rows[f"corpus:{name}"]
        assert row["error_kind"] == kind and row["error"].startswith(kind + ": ") and row["p_safe"] is None
    for name in list(unusual) + list(plain_images(2)):
        row = rows[f"corpus:{name}"]
        assert row["error"] is None, row
        assert abs(sum(row[f"p_{t}"] for t in Taxonomy().types) - 1) < 1e-4
        assert row["level"] is not None and row["flagged"] is not None
    counts = manifest["counts"]
    assert counts["errors_by_kind"] == {k: 1 for _, k in broken.values()}
    assert counts["items"] == len(files) and counts["scored"] == len(files) - len(broken) and manifest["complete"]
    policy = manifest["settings"]["policy"]
    assert policy["source"] == "default" and policy["rules"]["privacy"] == {"enabled": True, "hint": 0.5, "refuse": 0.5}
    assert manifest["settings"]["base_fingerprint"]["projector_digest"]
    err = capsys.readouterr().err
    assert "img/s" in err and f"errors={len(broken)}" in err  # the progress bar shows rate and errors


def test_broken_tar_members_and_parquet_cells(tiny_dir, safety_dir, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    shard = write_tar(shards / "00000.tar", wds_samples(2) + [("000000007.webp", b"RIFF....not really")])
    add_symlink(shard, "000000008.jpg", "elsewhere.jpg")
    run_scan(shards, tmp_path / "wds_out", settings(tiny_dir, safety_dir))
    rows = {r["id"]: r for r in read_parts(tmp_path / "wds_out").to_pylist()}
    assert rows["00000.tar:000000000"]["error"] is None and rows["00000.tar:000000001"]["error"] is None
    assert rows["00000.tar:000000007"]["error_kind"] == "not_an_image"
    assert rows["00000.tar:000000008"]["error_kind"] == "unreadable"

    good = encode(_rgb(3), "PNG")
    pq.write_table(pa.table({"jpg": [good, None, b"\x89PNG\r\n\x1a\n broken", good]}), tmp_path / "t.parquet")
    manifest = run_scan(tmp_path / "t.parquet", tmp_path / "pq_out", settings(tiny_dir, safety_dir))
    kinds = read_parts(tmp_path / "pq_out").column("error_kind").to_pylist()
    assert (
        kinds[0] is None
        and kinds[3] is None
        and kinds[1] == "empty"
        and kinds[2] in ("truncated", "unreadable", "not_an_image")
    )
    assert manifest["counts"]["errors"] == 2


def test_resume_skips_complete_parts_and_refuses_other_settings(tiny_dir, safety_dir, tmp_path):
    corpus = write_folder(tmp_path / "c", plain_images(7))
    out = tmp_path / "out"
    run_scan(corpus, out, settings(tiny_dir, safety_dir, part_size=3), progress=False)
    before = read_parts(out)
    parts = sorted(out.glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    stats = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts}
    parts[1].unlink()
    (out / "part-000001.parquet.tmp-4242").write_bytes(b"half written by a killed run")
    manifest = run_scan(corpus, out, settings(tiny_dir, safety_dir, part_size=3), progress=False)
    assert not list(out.glob("*.tmp-*"))
    for name in ("part-000000.parquet", "part-000002.parquet"):  # complete parts are never rewritten
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == stats[name]
    assert read_parts(out).equals(before)
    assert manifest["runs"][-1]["items_scanned"] == 3 and manifest["runs"][-1]["parts_skipped"] == 2
    with pytest.raises(ValueError, match="other settings"):
        run_scan(corpus, out, settings(tiny_dir, safety_dir, part_size=4), progress=False)


def test_flagged_follows_the_policy(tiny_dir, safety_dir, tmp_path):
    from safety_modules.policy import SafetyPolicy

    corpus = write_folder(tmp_path / "c", plain_images(6))
    (tmp_path / "argmax.yaml").write_text("mode: argmax\n")
    for policy in (None, str(tmp_path / "argmax.yaml")):
        out = tmp_path / f"out-{policy is None}"
        manifest = run_scan(corpus, out, settings(tiny_dir, safety_dir, policy=policy), progress=False)
        table = read_parts(out)
        levels = np.stack([table.column(c).to_numpy() for c in table.column_names if c.startswith("p_level_")], 1)
        types = np.stack([table.column(f"p_{t}").to_numpy() for t in manifest["settings"]["taxonomy"]["types"]], 1)
        flagged = np.array(table.column("flagged").to_pylist())
        if policy is None:
            expected = SafetyPolicy.default().flag_batch(levels, types)
        else:  # the reference's rule
            assert manifest["settings"]["policy"]["mode"] == "argmax"
            expected = (levels.argmax(1) > 0) & (types.argmax(1) != types.shape[1] - 1)
        np.testing.assert_array_equal(flagged, expected)
