"""Known-base manifests: read and checked, matched by fingerprint, named when modules meet the wrong base."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from safety_modules import IncompatibleBaseError, SafeLlava, SafetyModules
from safety_modules.checkpoints import ManifestError, known_base, known_bases, matching_bases, name_base
from safety_modules.checkpoints.bases import MANIFEST_DIR, read_manifest
from safety_modules.cli import main

EXPECTED = {  # hub id -> (layout, text width, pad to square)
    "llava-hf/llava-1.5-7b-hf": ("hf", 4096, False),
    "llava-hf/llava-1.5-13b-hf": ("hf", 5120, False),
    "liuhaotian/llava-v1.5-7b": ("original", 4096, True),
    "liuhaotian/llava-v1.5-13b": ("original", 5120, True),
}


def test_the_four_known_bases_are_packaged_and_consistent():
    bases = {b.hub_id: b for b in known_bases()}
    assert set(bases) == set(EXPECTED)
    for hub_id, (layout, width, pad) in EXPECTED.items():
        base = bases[hub_id]
        assert base.layout == layout and base.preprocessing["pad_to_square"] is pad
        assert base.fingerprint["text_hidden_size"] == base.geometry["text_hidden_size"] == width
        assert base.fingerprint["num_image_tokens"] == 576 and base.fingerprint["vision_feature_layer"] == -2
        # Original-layout bases need the vicuna_v1 system prompt; HF bases use the checkpoint's chat template.
        assert (base.template["system_prompt"] is not None) == (layout == "original")
        assert base.fingerprint["projector_digest"] is None  # not computed here: no weights (see the manifests)
    assert known_base("llava-hf/llava-1.5-7b-hf") is bases["llava-hf/llava-1.5-7b-hf"]
    assert known_base("someone/else") is None


def _manifest(tmp_path, **changes):
    data = yaml.safe_load((MANIFEST_DIR / "llava-hf--llava-1.5-7b-hf.yaml").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_manifest_that_contradicts_itself_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="fingerprint disagrees with the geometry"):
        read_manifest(_manifest(tmp_path, fingerprint__text_hidden_size=5120))
    with pytest.raises(ManifestError, match="num_image_tokens"):
        read_manifest(_manifest(tmp_path, geometry__patch_size=16))
    with pytest.raises(ManifestError, match="layout"):
        read_manifest(_manifest(tmp_path, layout="gguf"))
    with pytest.raises(ManifestError, match="unknown keys"):
        read_manifest(_manifest(tmp_path, homepage="x"))


def test_geometry_match_says_the_digest_was_not_compared():
    fingerprint = dict(known_base("llava-hf/llava-1.5-13b-hf").fingerprint, projector_digest="0123456789abcdef")
    exact, by_geometry = matching_bases(fingerprint)
    assert exact == [] and {b.hub_id for b in by_geometry} == {"llava-hf/llava-1.5-13b-hf", "liuhaotian/llava-v1.5-13b"}
    words = name_base(fingerprint)
    assert "llava-hf/llava-1.5-13b-hf" in words and "7b" not in words and "geometry" in words
    assert name_base(dict(fingerprint, text_hidden_size=2048)) is None


def test_the_fingerprint_command_fills_a_manifest_that_then_names_its_base(tiny_dir, tmp_path, capsys):
    assert main(["fingerprint", str(tiny_dir), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    recorded = SafeLlava.from_pretrained(tiny_dir, seed=0).config.base_fingerprint
    assert printed["fingerprint"] == recorded and printed["known_base"] is None
    assert main(["fingerprint", str(tiny_dir)]) == 0
    block = yaml.safe_load(capsys.readouterr().out.split("known base:")[0])  # the manifest's fingerprint block
    assert block == {"fingerprint": recorded}
    # An operator pastes the block into a manifest of the tiny base; from then on the base is named exactly.
    data = yaml.safe_load((MANIFEST_DIR / "llava-hf--llava-1.5-7b-hf.yaml").read_text())
    data["hub_id"] = "test/tiny-llava"
    data["geometry"].update(
        vision_hidden_size=recorded["vision_hidden_size"], text_hidden_size=recorded["text_hidden_size"]
    )
    data.update(block)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
    tiny = read_manifest(tmp_path / "tiny.yaml")
    assert name_base(recorded, [tiny]) == "test/tiny-llava"
    assert name_base(dict(recorded, projector_digest="ffffffffffffffff"), [tiny]) is None


def test_fingerprint_of_a_folder_that_is_not_a_model_is_a_clear_error(tmp_path, capsys):
    assert main(["fingerprint", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_modules_made_for_a_known_base_say_so_when_attached_to_another(tiny_model, tiny_dir, tmp_path):
    # Modules whose recorded base is LLaVA-1.5-7B (as after training on it), attached to the tiny base.
    made_for = dict(known_base("llava-hf/llava-1.5-7b-hf").fingerprint, projector_digest="0123456789abcdef")
    config = dataclasses.replace(tiny_model.safety.config, base_fingerprint=made_for)
    SafetyModules(config).save_pretrained(tmp_path / "mods")
    with pytest.raises(IncompatibleBaseError) as info:
        SafeLlava.from_pretrained(tiny_dir, tmp_path / "mods")
    message = str(info.value)
    assert "made for a base with the geometry of liuhaotian/llava-v1.5-7b, llava-hf/llava-1.5-7b-hf" in message
    assert "0123456789abcdef" in message and tiny_model.config.base_fingerprint["projector_digest"] in message
