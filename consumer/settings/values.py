"""One setting's value typed by its field's annotation, for the loader (`consumer.settings.load`).

A value from the TOML file is already typed by TOML and must match exactly (an integer for
an `int`, true/false for a `bool`; an integer is taken for a `float`). A value from the
environment (`EnvText`) is text, parsed: `1/true/yes/on`, `0/false/no/off`, digits, a
number, comma-separated strings for a tuple, empty or `none` for an optional field. A value
that does not fit raises ValueError whose text says what is wanted ("must be an integer"),
for the loader to prefix with the setting's name.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["EnvText", "coerce"]


class EnvText(str):
    """A value that came from the environment: typed from its text, not from TOML."""

    __slots__ = ()


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def coerce(value: Any, tp: Any) -> Any:
    """`value` (TOML-typed, or `EnvText`) as field type `tp`; ValueError says what is wanted."""
    env = isinstance(value, EnvText)
    inner = _optional_inner(tp)
    if inner is not None:
        return None if env and value.strip().lower() in ("", "none") else coerce(value, inner)
    if typing.get_origin(tp) is tuple:
        return _to_strings(value, env)
    convert = _CONVERTERS.get(tp)
    if convert is None:
        raise ValueError(f"has a type the loader cannot read ({tp!r})")
    return convert(value, env)


def _to_bool(value: Any, env: bool) -> bool:
    word = value.strip().lower() if env else None
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    if isinstance(value, bool) and not env:
        return value
    raise ValueError("must be true or false")


def _to_int(value: Any, env: bool) -> int:
    if env and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and not env:
        return value
    raise ValueError("must be an integer")


def _to_float(value: Any, env: bool) -> float:
    if env:
        try:
            return float(value)
        except ValueError:
            raise ValueError("must be a number") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError("must be a number")


def _to_str(value: Any, env: bool) -> str:
    if isinstance(value, str):
        return str(value)
    raise ValueError("must be a string")


def _to_strings(value: Any, env: bool) -> tuple[str, ...]:
    """A TOML list of strings, or comma-separated text from the environment."""
    items = [v.strip() for v in value.split(",") if v.strip()] if env else value
    if isinstance(items, list) and all(isinstance(v, str) for v in items):
        return tuple(str(v) for v in items)
    raise ValueError("must be a list of strings")


_CONVERTERS: dict[Any, Callable[[Any, bool], Any]] = {
    bool: _to_bool, int: _to_int, float: _to_float, str: _to_str,
}


def _optional_inner(tp: Any) -> Any:
    """`X` for `X | None`, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(rest) == 1:
            return rest[0]
    return None
