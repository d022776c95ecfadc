"""``params.yaml`` parsed once into one typed, frozen pydantic model (:mod:`resnet_mlops.params`).

This module holds what the model is built from and how it is read: :class:`Section` (the base
of every section class: frozen, unknown keys forbidden, strict types, no NaN or infinity), the
YAML reader that refuses duplicate keys, the ``key=value`` overrides, and the translation of
pydantic's errors into one line naming the file and the key (``params.yaml:
train.optimizer.lr: expected a number, got 'abc'``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import pydantic
import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict

from resnet_mlops.errors import ConfigError

T = TypeVar("T")
S = TypeVar("S", bound="Section")


class Section(pydantic.BaseModel):
    """Base of every params.yaml section: frozen, strict, unknown keys are errors.

    A ``BaseModel`` rather than a pydantic dataclass: a strict pydantic dataclass accepts only
    instances of its nested dataclasses, not the mappings YAML gives (pydantic 2.14).
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,  # "abc", 1.5 or "yes" are not coerced into a float, int or bool
        allow_inf_nan=False,  # lr: .nan trains NaN for hours; no knob wants a non-finite value
    )


def _as_tuple(value: Any) -> Any:
    # Strict mode takes only a tuple for a tuple field; YAML and JSON have lists.
    return tuple(value) if isinstance(value, list) else value


IntTuple = Annotated[tuple[int, ...], BeforeValidator(_as_tuple)]
StrTuple = Annotated[tuple[str, ...], BeforeValidator(_as_tuple)]


def matching(pattern: str, expected: str) -> AfterValidator:
    """A string check whose error says what is expected, not the regular expression."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"expected {expected}, got {value!r}")
        return value

    return AfterValidator(check)


# pydantic's message for the commonest type errors, in the words the old checker used.
_TYPE_MESSAGES = {
    "float_type": "expected a number",
    "int_type": "expected an integer",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "model_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "tuple_type": "expected a list",
    "finite_number": "expected a finite number",
}


def _field_model(annotation: Any) -> type[Section] | None:
    """The section class a field holds, if it holds one (``X``, ``Annotated[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    if get_origin(annotation) is Annotated:
        return _field_model(get_args(annotation)[0])
    return None


def _known_keys(cls: type[Section], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc`` inside ``cls`` (for an unknown key's message)."""
    model: type[Section] | None = cls
    for part in loc:
        field = model.model_fields.get(part) if model else None
        model = _field_model(field.annotation) if field else None
    return sorted(model.model_fields) if model else []


def _key_parts(cls: type[Section], loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without pydantic's union-member tags (``warmup_length.constrained-int``)."""
    model: type[Section] | None = cls
    kept: list[Any] = []
    for part in loc:
        if isinstance(part, int):
            kept.append(part)
        elif model is not None:
            # A field, or an unknown key (then nothing below it is known).
            kept.append(part)
            field = model.model_fields.get(part)
            model = _field_model(field.annotation) if field else None
        # else: a union member's tag under a plain field: not part of the key
    return tuple(kept)


def _key(prefix: str, loc: tuple[Any, ...]) -> str:
    key = prefix
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "literal_error":
        return f"expected {error['ctx']['expected']}"
    message = _TYPE_MESSAGES.get(kind) or error["msg"].removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def describe_error(cls: type[Section], error: pydantic.ValidationError, prefix: str = "") -> str:
    """The first of pydantic's errors as one line naming the key: ``train.lr: expected ...``.

    A value that fits no member of a union (``warmup_length: int | "auto"``) gives one error
    per member; they are joined: ``expected an integer or 'auto', got 'x'``.
    """
    errors = error.errors()
    first = errors[0]
    loc, kind = _key_parts(cls, tuple(first["loc"])), first["type"]
    key = _key(prefix, loc)
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        known = ", ".join(_known_keys(cls, loc[:-1]))
        return f"unknown key {key} (known: {known})"
    if kind in ("missing", "missing_argument"):
        return f"missing key {key}"
    same = [e for e in errors if _key_parts(cls, tuple(e["loc"])) == loc]
    messages = [_message(e) for e in same]
    message = messages[0] + "".join(
        " or " + m.removeprefix("expected ") for m in messages[1:] if m != messages[0]
    )
    if kind == "value_error":  # our own checks say what they got
        return f"{key}: {message}" if key else message
    got = f", got {first['input']!r}" if "input" in first else ""
    if kind == "float_type" and _is_number_text(first.get("input")):
        got += " (YAML 1.1 reads 1e-4 as text: write 1.0e-4)"
    return f"{key}: {message}{got}" if key else f"{message}{got}"


def _is_number_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def from_dict(cls: type[S], data: Any, prefix: str = "") -> S:
    """Build section ``cls`` from a mapping, rejecting unknown keys, wrong types and ranges.

    Raises:
        ConfigError: one line naming the key (``prefix`` first) and the problem.
    """
    try:
        return cls.model_validate(data)
    except pydantic.ValidationError as error:
        raise ConfigError(describe_error(cls, error, prefix)) from None


def to_dict(obj: Any) -> Any:
    """A section (tree) as plain dicts and lists, for YAML, JSON and MLflow params."""
    if isinstance(obj, pydantic.BaseModel):
        return {name: to_dict(getattr(obj, name)) for name in type(obj).model_fields}
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


def _is_text(annotation: Any) -> bool:
    """Whether a field takes only strings (then an override's text is kept as typed)."""
    if annotation is str:
        return True
    if get_origin(annotation) is Annotated:
        return _is_text(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        return all(isinstance(arg, str) for arg in get_args(annotation))
    return False


def _field_annotation(schema: type[Section] | None, parts: list[str]) -> Any:
    model: Any = schema
    annotation: Any = None
    for part in parts:
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        annotation, model = field.annotation, _field_model(field.annotation)
    return annotation


def apply_overrides(
    tree: dict[str, Any], overrides: list[str], schema: type[Section] | None = None
) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict, in a copy.

    Values are parsed as YAML (``true``, ``0.1``, ``[1, 2]``), except for a key that takes
    only text: ``md5=0123...`` must not become a number. With ``schema`` that is read from
    the key's field (so ``warmup_length=400`` is a number although the file says ``auto``);
    without, from the current value being a string.

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
        annotation = _field_annotation(schema, [*parents, leaf])
        text = _is_text(annotation) if annotation is not None else isinstance(node[leaf], str)
        node[leaf] = raw if text else yaml.safe_load(raw)
    return tree


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping.

    PyYAML keeps the last value silently: a second ``lr:`` further down the section would
    override the one the reader sees.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, bad YAML or a duplicate key is one
    :class:`ConfigError` line naming the file (and the line)."""
    try:
        data = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        problem = getattr(error, "problem", None)
        if problem and problem.startswith("duplicate key"):
            raise ConfigError(f"{path}:{where} {problem}") from None
        raise ConfigError(f"{path}:{where} invalid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_sections(
    path: Path,
    sections: Mapping[str, type] | Iterable[str],
    overrides: list[str] | tuple[str, ...] = (),
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The data set, the named sections and the whole tree, after checking the WHOLE file.

    A thin view of :func:`resnet_mlops.params.load_params`: every section is validated, so a
    stage never starts on a file another stage would reject. ``sections`` names the sections
    returned (a mapping's values are ignored; the one model knows each section's class).
    """
    from resnet_mlops.params import load_params  # the sections' modules import this one

    params, tree = load_params(path, overrides)
    return params.dataset, {name: getattr(params, name) for name in sections}, tree


def load_stage_params(
    path: Path,
    section: str,
    cls: type[T] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> tuple[str, T]:
    """The data set and one stage's section of a params file (with overrides applied)."""
    dataset, parsed, _ = load_sections(path, [section], overrides)
    return dataset, parsed[section]
