"""Typed configs: each component owns a dataclass; presets are YAML files of sections.

A preset such as ``configs/head.yaml`` holds one mapping per component (``model:``,
``train:`` ...). ``load_section`` turns one mapping into that component's dataclass,
rejecting unknown keys and wrong types so a typo in a preset fails loudly instead of
being ignored. Nested dataclasses are filled recursively.
"""

from __future__ import annotations

import dataclasses
import io
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A preset or override does not match the component's config dataclass."""


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {annotation.__name__}, got {value!r}")
        return from_dict(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - names
    if unknown:
        import difflib

        close = {u: difflib.get_close_matches(str(u), names, n=1) for u in sorted(unknown, key=str)}
        hint = "; ".join(f"{u!r}: did you mean {m[0]!r}?" for u, m in close.items() if m)
        raise ConfigError(f"{where or cls.__name__}: unknown field(s) {sorted(unknown, key=str)}"
                          f"{' (' + hint + ')' if hint else ''}; valid: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where or cls.__name__}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain-YAML-serialisable dict of a config dataclass (tuples become lists)."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v
    return conv(cfg)


def resolve_preset(name_or_path: str | os.PathLike) -> Path:
    """A preset name (``head``) maps to ``configs/head.yaml``; anything else is a path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise FileNotFoundError(f"config file not found: {p}")
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no preset named {name_or_path!r}; known presets: {known}")
    return candidate


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain PyYAML keeps
    the last one without a word: ``iters: 2`` then ``iters: 3`` trained 3 steps)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # << merges may repeat keys: allowed
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (first on line {first}); keep "
                                "one", key_node.start_mark)
        return super().construct_mapping(node, deep)


def read_yaml_file(path: str | os.PathLike, what: str = "YAML file"):
    """The document of a YAML file (duplicate keys refused); ConfigError naming the file and
    the cause when it is a folder, unreadable, not text or not valid YAML."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder, not a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.start}: {e.reason}); is it "
                          "the right file? Save it as UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    stream = io.StringIO(text)
    stream.name = str(path)  # PyYAML names it in its error marks
    try:
        return yaml.load(stream, Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from None


def load_yaml(path: str | os.PathLike) -> dict:
    data = read_yaml_file(path, "config file") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    for section, value in data.items():
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{path}: section {section!r} must be a mapping of field: value, "
                              f"got {value!r}")
    return data


def load_section(cls: type[T], preset: str | os.PathLike | Mapping | None, section: str,
                 overrides: Mapping[str, Any] | None = None) -> T:
    """Config of one component: defaults, then the preset's ``section``, then ``overrides``."""
    data: dict = {}
    if isinstance(preset, Mapping):
        data = dict(preset.get(section) or {})
    elif preset is not None:
        path = resolve_preset(preset)
        data = dict(load_yaml(path).get(section) or {})
        where = f"{path}:{section}"
    if overrides:
        data.update(overrides)
    return from_dict(cls, data, where=section if not isinstance(preset, (str, os.PathLike)) else where)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.field=value`` (value parsed as YAML) -> (section, field, value)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    section, field = key.split(".", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value {raw!r} is not valid YAML ({problem}); "
                          "a text value with YAML's special characters needs quotes, e.g. "
                          "--set 'section.field=\"[text\"'") from None
    return section, field, value


def parse_overrides(texts) -> dict[str, dict[str, Any]]:
    """Several ``section.field=value`` strings (``--set`` options) -> ``{section: {field: value}}``,
    a later value for the same field winning."""
    out: dict[str, dict[str, Any]] = {}
    for text in texts:
        section, field, value = parse_override(text)
        out.setdefault(section, {})[field] = value
    return out
