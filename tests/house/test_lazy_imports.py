"""A CLI that starts at once: ``import safety_modules`` and building the ``safevlm`` parser import neither torch
nor transformers; the public names still import as before, on first use (``lazy_loader`` stubs).

The import checks run in a fresh interpreter: this test process has imported torch long before.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers")
# The lazily attached packages: each has an ``__init__.pyi`` that lists its public names.
LAZY_PACKAGES = sorted(
    ".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "safety_modules").rglob("__init__.pyi")
)


def heavy_modules_after(code: str) -> list[str]:
    """The heavy packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    report = f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    probe = f"{code}\nimport json, sys\n{report}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_the_package_imports_no_torch():
    assert heavy_modules_after("import safety_modules") == []


def test_building_the_cli_parser_imports_no_torch():
    code = "from safety_modules.cli import build_parser\nbuild_parser().format_help()"
    assert heavy_modules_after(code) == []


def test_a_public_name_imports_its_module_on_first_use():
    assert "torch" in heavy_modules_after("from safety_modules import SafeLlava")


def test_the_public_names_are_kept():
    import safety_modules

    assert safety_modules.__all__ == [
        "CheckpointError",
        "Gate",
        "GatedAnswer",
        "IncompatibleBaseError",
        "PolicyError",
        "SafeLlava",
        "SafeLlavaOutput",
        "SafetyConfig",
        "SafetyDecision",
        "SafetyModules",
        "SafetyPolicy",
        "SafetyScores",
        "Taxonomy",
    ]
    from safety_modules import Gate, SafeLlava, SafetyPolicy
    from safety_modules.gate import Gate as gate_gate
    from safety_modules.modeling.safe_llava import SafeLlava as safe_llava
    from safety_modules.policy import SafetyPolicy as policy_policy

    assert (Gate, SafeLlava, SafetyPolicy) == (gate_gate, safe_llava, policy_policy)


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_listed_name_resolves_and_dir_lists_them(package):
    module = importlib.import_module(package)
    assert module.__all__, f"{package}: no public names read from its __init__.pyi"
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    assert sorted(dir(module)) == sorted(module.__all__)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018 (the attribute access is the test)


def test_the_lazy_packages_are_found():
    assert {"safety_modules", "safety_modules.modeling", "safety_modules.modeling.llava"} <= set(LAZY_PACKAGES)
