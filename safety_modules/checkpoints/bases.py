"""Known LLaVA-1.5 bases: the manifests in ``safety_modules/checkpoints/bases/*.yaml``, read and matched.

A manifest says what a base is (hub id, layout, geometry), what it needs (chat template, image
preprocessing) and which fingerprint safety modules record for it. The fingerprint's geometry part
follows from the base's config; its projector digest needs the weights, so a manifest may leave it
``null`` until an operator fills it with ``safevlm fingerprint HUB_ID``. Matching then falls back to
the geometry and says that it did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..safe_files import read_yaml

MANIFEST_DIR = Path(__file__).parent / "bases"
LAYOUTS = ("hf", "original")
# The fingerprint keys that the geometry decides (see modeling/fingerprint.py); the digest is the rest.
GEOMETRY_KEYS = ("vision_hidden_size", "text_hidden_size", "num_image_tokens", "vision_feature_layer")
FINGERPRINT_KEYS = (*GEOMETRY_KEYS, "projector_digest")
_MANIFEST_KEYS = {
    "hub_id",
    "layout",
    "architecture",
    "vision_tower",
    "geometry",
    "template",
    "preprocessing",
    "fingerprint",
}


class ManifestError(ConfigError):
    """A known-base manifest is malformed or contradicts itself."""


@dataclass(frozen=True)
class KnownBase:
    """One known base model, as its manifest describes it."""

    hub_id: str
    layout: str
    architecture: str
    vision_tower: str | None
    geometry: dict[str, Any]
    template: dict[str, Any]
    preprocessing: dict[str, Any]
    fingerprint: dict[str, Any]
    path: Path

    @property
    def has_digest(self) -> bool:
        return self.fingerprint.get("projector_digest") is not None


def read_manifest(path: str | Path) -> KnownBase:
    """Read and check one manifest: known keys, a known layout, a fingerprint consistent with the geometry."""
    path = Path(path)
    data = read_yaml(path, "known-base manifest")
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: a manifest is a YAML mapping")
    missing, unknown = sorted(_MANIFEST_KEYS - set(data)), sorted(set(data) - _MANIFEST_KEYS)
    if missing or unknown:
        raise ManifestError(f"{path}: missing keys {missing}, unknown keys {unknown}")
    if data["layout"] not in LAYOUTS:
        raise ManifestError(f"{path}: layout must be one of {list(LAYOUTS)}, got {data['layout']!r}")
    fingerprint = data["fingerprint"]
    if not isinstance(fingerprint, dict) or set(fingerprint) != set(FINGERPRINT_KEYS):
        raise ManifestError(f"{path}: fingerprint must hold exactly {list(FINGERPRINT_KEYS)}")
    geometry = data["geometry"]
    size, patch = geometry.get("image_size"), geometry.get("patch_size")
    tokens = (size // patch) ** 2 if size and patch else None
    if geometry.get("num_image_tokens") != tokens:
        raise ManifestError(f"{path}: num_image_tokens must be (image_size // patch_size) ** 2 = {tokens}")
    wrong = {k: (fingerprint[k], geometry.get(k)) for k in GEOMETRY_KEYS if fingerprint[k] != geometry.get(k)}
    if wrong:
        raise ManifestError(f"{path}: fingerprint disagrees with the geometry (fingerprint, geometry): {wrong}")
    return KnownBase(path=path, **data)


@lru_cache(maxsize=1)
def known_bases() -> tuple[KnownBase, ...]:
    """Every packaged manifest, sorted by hub id (read once per process)."""
    bases = tuple(sorted((read_manifest(p) for p in MANIFEST_DIR.glob("*.yaml")), key=lambda b: b.hub_id))
    ids = [b.hub_id for b in bases]
    if len(set(ids)) != len(ids):
        raise ManifestError(f"two manifests in {MANIFEST_DIR} name the same hub id: {ids}")
    return bases


def known_base(hub_id: str) -> KnownBase | None:
    """The manifest of ``hub_id``, or ``None`` when it is not a known base."""
    return next((b for b in known_bases() if b.hub_id == hub_id), None)


def matching_bases(
    fingerprint: dict[str, Any] | None,
    bases: Sequence[KnownBase] | None = None,
) -> tuple[list[KnownBase], list[KnownBase]]:
    """``(exact, by_geometry)`` among ``bases`` (default: the packaged ones): bases whose recorded fingerprint
    equals ``fingerprint`` (digest included), and bases whose manifest has no digest yet but whose geometry
    equals it."""
    if not fingerprint:
        return [], []
    exact, by_geometry = [], []
    for base in known_bases() if bases is None else bases:
        if any(base.fingerprint[k] != fingerprint.get(k) for k in GEOMETRY_KEYS):
            continue
        if not base.has_digest:
            by_geometry.append(base)
        elif base.fingerprint["projector_digest"] == fingerprint.get("projector_digest"):
            exact.append(base)
    return exact, by_geometry


def name_base(fingerprint: dict[str, Any] | None, bases: Sequence[KnownBase] | None = None) -> str | None:
    """Words naming the known base a fingerprint belongs to, or ``None`` when no manifest matches."""
    exact, by_geometry = matching_bases(fingerprint, bases)
    if exact:
        return " or ".join(b.hub_id for b in exact)
    if by_geometry:
        names = ", ".join(b.hub_id for b in by_geometry)
        return (
            f"a base with the geometry of {names} (the manifests record no projector digest yet, "
            "so the geometry is all that was compared)"
        )
    return None
