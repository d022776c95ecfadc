"""``params.yaml`` parsed once into typed, frozen dataclasses.

Unknown keys and wrong types are errors that name the key (``train.lr: expected float, got
'abc'``), never silent no-ops. Command-line ``key=value`` overrides go through the same parser.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the file and key."""


def _convert(value: Any, kind: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(kind, value, key)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported field type {kind!r}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    dotted = f"{prefix}." if prefix else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {dotted}{unknown[0]} (known: {', '.join(sorted(fields))})")
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _convert(data[name], hints[name], f"{dotted}{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key {dotted}{name}")
    try:
        return cls(**values)
    except ValueError as error:  # a dataclass's own range checks
        raise ConfigError(str(error)) from None


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain dicts and lists, for YAML, JSON and MLflow params."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict, in a copy.

    Values are parsed as YAML (``true``, ``0.1``, ``[1, 2]``), except where the current value
    is a string.

    Raises:
        ConfigError: an override is not ``key=value`` or names a key that does not exist.
    """
    tree = yaml.safe_load(yaml.safe_dump(tree))
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not of the form key=value")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {override!r}: unknown key {key}")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"override {override!r}: unknown key {key}")
        # A string key keeps the text as typed: md5=0123... must not become a number.
        node[leaf] = raw if isinstance(node[leaf], str) else yaml.safe_load(raw)
    return tree


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or bad YAML is a one-line :class:`ConfigError`."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


DATASETS = ("cifar10", "imagenet")


def load_sections(
    path: Path, sections: Mapping[str, type], overrides: list[str] | tuple[str, ...] = ()
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The data set, the named sections parsed into their dataclasses, and the whole tree.

    Errors name the file: ``params.yaml: unknown key prepare.sorce (known: ...)``.
    """
    try:
        tree = apply_overrides(read_yaml(path), list(overrides))
        dataset = _convert(tree.get("dataset"), typing.Literal[DATASETS], "dataset")
        parsed = {}
        for section, cls in sections.items():
            if section not in tree:
                raise ConfigError(f"missing section {section!r}")
            parsed[section] = from_dict(cls, tree[section], section)
        return dataset, parsed, tree
    except ConfigError as error:
        message = str(error)
        raise ConfigError(
            message if message.startswith(f"{path}:") else f"{path}: {message}"
        ) from None


def load_stage_params(
    path: Path, section: str, cls: type[T], overrides: list[str] | tuple[str, ...] = ()
) -> tuple[str, T]:
    """The data set and one stage's section of a params file (with overrides applied)."""
    dataset, parsed, _ = load_sections(path, {section: cls}, overrides)
    return dataset, parsed[section]
