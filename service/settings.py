"""Settings parsed in one place, from the option dataclasses' own annotations.

Every options dataclass (:class:`~lithoscope.service.config.ServiceConfig` and the trees
under it, the simulator's ``SimConfig``) is built from plain values (TOML, JSON, CLI) by
:func:`parse_options` and turned back into them by :func:`options_to_dict`. The field's
annotation says what a value must be; a value of the wrong kind is refused with a
:class:`~lithoscope.service.errors.ConfigError` that names the file, the key, what was
expected and what was given (``lithoscope.toml: heartbeat_s: Expected a number. Got '1.0'
(a string) instead.``). Range checks stay in each dataclass's ``__post_init__``; their
errors get the same file and section prefix.

The documentation of a setting is the attribute docstring under its field. From it come
``lithoscope config --defaults`` (:func:`defaults_toml`, a complete commented TOML that
loads back) and the settings reference in docs/configuration.md
(:func:`settings_markdown`; a test fails when the two diverge).

No validation library: the annotations in use are a handful (bool, int, float, str,
optional, fixed and variable tuples, nested dataclasses), strictness is what is wanted
(``"1.0"`` is not a number, ``true`` is not an integer), and the checks read the same
annotations the type checker does.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import inspect
import json
import math
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = [
    "defaults_toml",
    "field_docs",
    "options_from_dict",
    "options_to_dict",
    "parse_options",
    "settings_markdown",
]

T = TypeVar("T")


# ---------------------------------------------------------------------- parsing


def _kind(value: Any) -> str:
    """How a value reads to a person who wrote it in TOML."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return f"a {type(value).__name__}"


def _expected(annotation: Any) -> str:
    """What ``annotation`` asks for, in words."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        words = [_expected(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" (or left out)" if type(None) in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0])}" if len(set(args)) == 1 \
            else f"a list of {len(args)} values"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    if dataclasses.is_dataclass(annotation):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _plural(annotation: Any) -> str:
    return {bool: "booleans", int: "integers", float: "numbers",
            str: "strings"}.get(annotation, "values")


class _Mismatch(Exception):
    """A value does not fit its annotation; carries the path inside the value."""

    def __init__(self, annotation: Any, value: Any, path: str = "") -> None:
        super().__init__(path)
        self.annotation, self.value, self.path = annotation, value, path


def _convert(annotation: Any, value: Any, where: str, key: str) -> Any:
    """``value`` as ``annotation`` asks, or raise _Mismatch / ConfigError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or annotation is object:
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where, key)
            except _Mismatch:
                continue
        raise _Mismatch(annotation, value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch(annotation, value)
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise _Mismatch(annotation, value)
        out = []
        for i, (item, element) in enumerate(zip(items, value, strict=True)):
            try:
                out.append(_convert(item, element, where, f"{key}[{i}]"))
            except _Mismatch as exc:
                raise _Mismatch(annotation, value) from exc
        return tuple(out)
    if origin is typing.Literal:
        if value in args and not isinstance(value, bool):
            return value
        raise _Mismatch(annotation, value)
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        if isinstance(value, Mapping):
            return dict(value)
        raise _Mismatch(annotation, value)
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch(annotation, value)
        return parse_options(annotation, value, where=where, section=key)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError:
            raise _Mismatch(annotation, value) from None
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch(annotation, value)
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch(annotation, value)
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch(annotation, value)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _Mismatch(annotation, value)
    return value  # an annotation this parser does not know: the constructor checks it


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _prefix(where: str, section: str) -> str:
    return ": ".join(p for p in (where, section and f"[{section}]") if p)


def parse_options(cls: type[T], data: Mapping[str, Any], *, where: str = "",
                  section: str = "", what: str = "") -> T:
    """Build the options dataclass ``cls`` from plain values, checked against its
    annotations.

    Parameters
    ----------
    cls : dataclass type
        The options class; nested dataclass fields are parsed from tables.
    data : Mapping
        Plain values (a TOML table, a JSON object, CLI flags); a key left out keeps the
        field's default.
    where : str
        The file (or other origin) the values come from, put at the head of errors.
    section : str
        Dotted path of ``data`` inside the file (``analysis``, ``limits``).
    what : str
        The options' name in the unknown-key message (``analysis``, ``alert``, ...).

    Raises
    ------
    ConfigError
        An unknown key, a value of the wrong kind, or a value the class refuses, with
        the file, the key, what was expected and what was given.
    """
    prefix = _prefix(where, section)
    head = f"{prefix}: " if prefix else ""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{head}Expected a table of options. Got {data!r} "
                          f"({_kind(data)}) instead.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = _hints(typing.cast(Any, cls))
    name = what or section or "service"
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{head}Unknown {name} option {key!r}. Expected one of "
                              f"{', '.join(fields)}.")
        dotted = f"{section}.{key}" if section else key
        try:
            values[key] = _convert(hints[key], value, where, dotted)
        except _Mismatch:
            raise ConfigError(
                f"{where + ': ' if where else ''}{dotted}: Expected "
                f"{_expected(hints[key])}. Got {value!r} ({_kind(value)}) instead."
            ) from None
    try:
        return cls(**values)
    except ConfigError as exc:
        if not prefix or str(exc).startswith(prefix):
            raise
        raise ConfigError(f"{head}{exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{head}Invalid {name} options: {exc}.") from None


def options_from_dict(cls: type[T], data: Mapping[str, Any], *, what: str) -> T:
    """:func:`parse_options` for an options class's ``from_dict`` (``what`` names the
    options in messages: "analysis", "alert", "simulator")."""
    return parse_options(cls, data, what=what)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return options_to_dict(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def options_to_dict(options: Any) -> dict[str, Any]:
    """Plain, JSON-ready values (tuples as lists, nested options as dicts); the inverse
    of :func:`parse_options`."""
    return {f.name: _plain(getattr(options, f.name)) for f in dataclasses.fields(options)
            if f.init}


# ---------------------------------------------------------------------- documentation


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstring of each field of ``cls`` (the string literal under it),
    whitespace-normalised; fields without one are left out."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # pragma: no cover - no source (frozen app)
        return {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    docs: dict[str, str] = {}
    statements = body.body
    for statement, following in zip(statements, statements[1:], strict=False):
        if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def _nested(cls: type) -> list[tuple[str, type]]:
    hints = _hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls)
            if f.init and dataclasses.is_dataclass(hints[f.name])]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _comment(text: str, width: int = 88) -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent="# ", subsequent_indent="# ") \
        if text else []


def defaults_toml(cls: type, *, section: str = "", header: str = "") -> str:
    """Every option of ``cls`` at its default as commented TOML (nested options as
    tables). ``None`` defaults, which TOML cannot write, are shown commented out.
    :func:`parse_options` reads the text back to the defaults."""
    defaults = cls()
    lines = [*_comment(header), ""] if header else []
    nested = {name for name, _ in _nested(cls)}
    docs = field_docs(cls)
    if section:
        lines += [f"[{section}]"]
    for f in dataclasses.fields(cls):
        if not f.init or f.name in nested:
            continue
        lines += _comment(docs.get(f.name, ""))
        value = _plain(getattr(defaults, f.name))
        unset = _expected(_hints(cls)[f.name]).removesuffix(" (or left out)")
        lines.append(f"# {f.name} = ...  (unset by default; {unset})"
                     if value is None else f"{f.name} = {_toml_value(value)}")
        lines.append("")
    text = "\n".join(lines)
    for name, sub in _nested(cls):
        doc = docs.get(name) or (inspect.getdoc(sub) or "").split("\n\n")[0]
        text += "\n" + defaults_toml(sub, section=f"{section}.{name}" if section else name,
                                     header=" ".join(doc.split()))
    return text


def settings_markdown(cls: type, *, section: str = "") -> str:
    """The settings reference of docs/configuration.md: one table per options class."""
    defaults = cls()
    nested = {name for name, _ in _nested(cls)}
    hints, docs = _hints(cls), field_docs(cls)
    title = f"`[{section}]`" if section else "top level"
    summary = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
    lines = [f"### {title}", "", summary, "", "| key | type | default | meaning |",
             "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if not f.init or f.name in nested:
            continue
        value = _plain(getattr(defaults, f.name))
        shown = "unset" if value is None else f"`{_toml_value(value)}`"
        meaning = docs.get(f.name, "").replace("|", "\\|")
        lines.append(f"| `{f.name}` | {_expected(hints[f.name])} | {shown} | {meaning} |")
    text = "\n".join(lines) + "\n"
    for name, sub in _nested(cls):
        text += "\n" + settings_markdown(sub, section=f"{section}.{name}" if section else name)
    return text
