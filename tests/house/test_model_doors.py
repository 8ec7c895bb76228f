"""Only `safety_modules/modeling/` knows how the base model is built (an AST check, like the import-cycle test).

Everything else reaches the base through `SafeLlava`'s doors (`language_model`, `vision_tower`,
`llava_projector`, `lm_head`, `input_embeddings`, the LoRA methods). A reach past them is an attribute
chain ``<x>.base.model`` or ``<x>.base.lm_head`` (``SafeLlava.base`` is the transformers model; its
``model`` and ``lm_head`` are transformers' internals). The library, the benches and the tests are checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("safety_modules", "bench", "tests")
MODELING = ROOT / "safety_modules" / "modeling"
INTERNALS = {"model", "lm_head"}


def reaches(path: Path) -> list[str]:
    """``file:line: <x>.base.<internal>`` for every reach past the doors in one Python file."""
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    nodes = [
        node
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Attribute)
        and node.attr in INTERNALS
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "base"
    ]
    return [f"{name}:{node.lineno}: {ast.unparse(node)}" for node in sorted(nodes, key=lambda n: n.lineno)]


def reaches_outside_modeling(roots: list[Path]) -> list[str]:
    found = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if not path.is_relative_to(MODELING):
                found += reaches(path)
    return found


def test_nothing_outside_modeling_reaches_into_the_base():
    found = reaches_outside_modeling([ROOT / name for name in CHECKED])
    assert not found, (
        "only safety_modules/modeling/ knows the base's structure; use SafeLlava's doors "
        "(language_model, vision_tower, llava_projector, lm_head, input_embeddings, add_lora/load_lora/"
        "save_lora/lora_disabled) instead of:\n" + "\n".join(found)
    )


def test_the_checker_finds_reaches_however_they_are_written(tmp_path):
    (tmp_path / "user.py").write_text(
        "def f(model, ac):\n"
        "    a = model.base.model.language_model\n"
        "    b = ac.model.base.lm_head(1)\n"
        "    c = (model.base\n"
        "         .model)\n"
        "    d = model.language_model, model.base.config, model.base.generate, model.lm_head\n"
    )
    found = reaches(tmp_path / "user.py")
    assert [line.split(": ", 1)[1] for line in found] == [
        "model.base.model",
        "ac.model.base.lm_head",
        "model.base.model",
    ]
    assert [int(line.split(":")[1]) for line in found] == [2, 3, 4]
