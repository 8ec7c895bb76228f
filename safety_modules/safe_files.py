"""The one way the project reads a YAML or JSON file, and turns it into typed settings.

Every file is hostile until checked: its size is capped before it is read, a YAML's aliases are
counted as the document is composed (a "billion laughs" fails after ``max_nodes`` nodes, in
milliseconds, with bounded memory), and nesting deeper than ``max_depth`` is an error, never a
``RecursionError``. YAML is read with YAML 1.2 booleans: only ``true``/``false`` are booleans, so
``mixed_precision: no`` is the string ``"no"``.

Settings are pydantic dataclasses that subclass `Settings` (``extra="forbid"``): unknown keys and
wrong types are a `ConfigError` naming each, in one line, and the defaults live in the class (the
CLI prints them with `Settings.defaults_text`). No torch here: this module sits at the bottom.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import yaml
from pydantic import ConfigDict, ValidationError

from .errors import ConfigError, SafeVLMError

MAX_YAML_BYTES = 1 << 20  # 1 MiB: recipes, policies and card data are a few KB; PyYAML parses ~1 MB/s
MAX_JSON_BYTES = 16 << 20  # 16 MiB: configs and shard indexes (a 70B index is ~100 KB)
MAX_NODES = 200_000  # values after alias expansion
MAX_DEPTH = 64  # nesting levels; real settings use fewer than 6

# pydantic settings: unknown keys are an error; values are checked (and "3" -> 3 where the type says int).
SETTINGS_CONFIG = ConfigDict(extra="forbid")

_BOOL_TAG = "tag:yaml.org,2002:bool"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that measures each node as it is composed: its size with aliases expanded
    and its depth. Composition is bottom-up, so a bomb fails at the first node over the cap."""

    # YAML 1.2 booleans (true/false only); yes/no/on/off stay strings.
    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str, source: str, max_nodes: int, max_depth: int) -> None:
        super().__init__(stream)
        self.name = source  # the file in the error marks, not "<unicode string>"
        self.source, self.max_nodes, self.max_depth = source, max_nodes, max_depth
        self._open = 0  # nodes being composed: the current depth
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, depth)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            target = self.anchors.get(self.peek_event().anchor)
            if target is not None and id(target) not in self._measured:
                raise ConfigError(
                    f"{self.source}: a recursive alias (*{self.peek_event().anchor} inside its own anchor)"
                )
            return super().compose_node(parent, index)  # measured when its anchor closed
        self._open += 1
        if self._open > self.max_depth:
            raise ConfigError(f"{self.source}: nested deeper than {self.max_depth} levels")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._open -= 1
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        sizes = [self._measured[id(child)] for child in children]
        size = 1 + sum(s for s, _ in sizes)
        depth = 1 + max((d for _, d in sizes), default=0)
        if size > self.max_nodes:
            raise ConfigError(f"{self.source}: expands to more than {self.max_nodes} values (aliases of aliases?)")
        if depth > self.max_depth:
            raise ConfigError(f"{self.source}: nested deeper than {self.max_depth} levels (through aliases)")
        self._measured[id(node)] = (size, depth)
        return node


_BoundedLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def read_capped(path: str | Path, what: str, max_bytes: int, error: type[SafeVLMError] = ConfigError) -> bytes:
    """The bytes of ``path`` (a ``what``), refused past ``max_bytes`` without reading the rest."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_dir():
        raise error(f"{path} is a folder, not a {what}")
    with path.open("rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{path}: a {what} is at most {max_bytes} bytes; this one is larger")
    return data


def _text(data: bytes, source: str, error: type[SafeVLMError]) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def parse_yaml(text: str, source: str, *, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Any:
    """One YAML document (``source`` names it in errors), with the alias and depth caps."""
    loader = _BoundedLoader(text, source, max_nodes, max_depth)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def read_yaml(
    path: str | Path,
    what: str = "settings file",
    *,
    max_bytes: int = MAX_YAML_BYTES,
    max_nodes: int = MAX_NODES,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """The YAML file at ``path`` (a ``what``, for messages) with every cap; an empty file is ``None``."""
    text = _text(read_capped(path, what, max_bytes), str(path), ConfigError)
    return parse_yaml(text, str(path), max_nodes=max_nodes, max_depth=max_depth)


def parse_json(
    text: str | bytes, source: str, *, max_depth: int = MAX_DEPTH, error: type[SafeVLMError] = ConfigError
) -> Any:
    """One JSON value; nesting past ``max_depth`` is ``error``, never a ``RecursionError``."""
    if isinstance(text, bytes):
        text = _text(text, source, error)
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{source}: nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON: {exc}") from None
    if _depth(value) > max_depth:
        raise error(f"{source}: nested deeper than {max_depth} levels")
    return value


def read_json(
    path: str | Path,
    what: str = "JSON file",
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_DEPTH,
    error: type[SafeVLMError] = ConfigError,
) -> Any:
    """The JSON file at ``path`` (a ``what``, for messages) with the size and depth caps."""
    return parse_json(read_capped(path, what, max_bytes, error), str(path), max_depth=max_depth, error=error)


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in node)
    return deepest


class Settings:
    """Typed settings read from a mapping or a YAML file. Subclasses are pydantic dataclasses with
    ``config=SETTINGS_CONFIG``; ``KIND`` names them in errors, and ``TAG`` (key, value), when set, is a key
    the file must carry with that value (``benchmark: rtvlm``) that is not a setting."""

    KIND: ClassVar[str] = "settings"
    TAG: ClassVar[tuple[str, str] | None] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> Self:
        """Validated settings from ``data``; every problem is named in one `ConfigError`."""
        source = source or f"{cls.KIND} settings"
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: {cls.KIND} settings are a mapping, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigError(f"{source}: unknown {cls.KIND} settings {unknown}; known: {known}")
        try:
            return cls(**data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {describe(exc)}") from None

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, **overrides: Any) -> Self:
        """The settings in the YAML file at ``path`` (all defaults when ``None``); each override that is not
        ``None`` replaces its setting."""
        data: dict[str, Any] = {}
        source = "the command line"
        if path is not None:
            source = str(path)
            loaded = read_yaml(path, f"{cls.KIND} file")
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"{path}: {cls.KIND} settings are a YAML mapping, got {type(loaded).__name__}")
            data = loaded or {}
            if cls.TAG is not None:
                key, value = cls.TAG
                if data.get(key) != value:
                    raise ConfigError(f"{path} is a recipe for {key} {data.get(key)!r}, not {value!r}")
                data.pop(key)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, source)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (nested settings as dicts), ready for YAML or JSON."""
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {self.TAG[0]: self.TAG[1], **out} if self.TAG else out

    @classmethod
    def defaults_text(cls) -> str:
        """Every setting and its default, one per line (what ``--help`` shows)."""
        lines = [f"{cls.KIND} settings (recipe keys; defaults):"]
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.default is not dataclasses.MISSING:
                default: Any = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = "(required)"
            if dataclasses.is_dataclass(default) and not isinstance(default, type):
                default = dataclasses.asdict(default)
            lines.append(f"  {f.name}: {json.dumps(default, default=str)}")
        return "\n".join(lines)


def describe(exc: ValidationError) -> str:
    """A pydantic error as one line: each problem as ``where: what (got value)``."""
    problems = []
    for error in exc.errors(include_url=False):
        cause = (error.get("ctx") or {}).get("error")
        if error["type"] == "value_error" and isinstance(cause, Exception):
            problems.append(str(cause))  # a check of our own (__post_init__, a validator): its message as is
            continue
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        value = repr(error.get("input"))
        value = value if len(value) <= 60 else value[:57] + "..."
        problems.append(f"{where}: {error['msg']} (got {value})")
    return "; ".join(problems)
