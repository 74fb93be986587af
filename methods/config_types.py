"""Type checks for method configs: preset tables and user overrides against the Config's fields.

Values come from Python preset tables and from TOML, so the rules follow TOML's types: ``float``
accepts an int (TOML ``lr = 1``), ``bool`` does not pass for ``int`` (nor the reverse), a tuple
field accepts a list (TOML has only arrays) and the value is stored as a tuple. Supported
annotations: int, float, bool, str, Literal[...], X | None (any union), tuple[X, ...],
tuple[X, Y, ...] of fixed length, nested tuples, Any, and nested dataclasses (given as an
instance or a table of their fields).
"""

from __future__ import annotations

import dataclasses
import numbers
import types
from typing import Any, Literal, Mapping, Union, get_args, get_origin, get_type_hints

import numpy as np


class Mismatch(Exception):
    """A value does not conform to an annotation."""


def _scalar(tp: type, value: Any) -> Any:
    is_bool = isinstance(value, (bool, np.bool_))
    ok = {
        bool: is_bool,
        int: isinstance(value, numbers.Integral) and not is_bool,
        float: isinstance(value, numbers.Real) and not is_bool,
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        ok = isinstance(value, tp)
    if not ok:
        raise Mismatch
    return value


def _tuple(tp: Any, value: Any) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise Mismatch
    args = get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(conform(args[0], v) for v in value)
    if args and len(args) != len(value):
        raise Mismatch
    return tuple(conform(a, v) for a, v in zip(args, value)) if args else tuple(value)


def _dataclass(tp: type, value: Any) -> Any:
    if isinstance(value, tp):
        return value
    if not isinstance(value, Mapping):
        raise Mismatch
    hints = get_type_hints(tp)
    names = {f.name for f in dataclasses.fields(tp)}
    if set(value) - names:
        raise Mismatch
    return tp(**{k: conform(hints[k], v) for k, v in value.items()})


def conform(tp: Any, value: Any) -> Any:
    """``value`` as stored for annotation ``tp`` (lists become tuples); raises Mismatch."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None) or tp is None:
        if value is None:
            return None
        raise Mismatch
    if origin is Literal:
        for allowed in get_args(tp):
            if value == allowed and isinstance(value, bool) == isinstance(allowed, bool):
                return value
        raise Mismatch
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return conform(arg, value)
            except Mismatch:
                continue
        raise Mismatch
    if origin is tuple or tp is tuple:
        return _tuple(tp, value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp, value)
    if isinstance(tp, type):
        return _scalar(tp, value)
    return value  # an annotation this checker does not model: left to the Config itself


def type_name(tp: Any) -> str:
    """A reader's spelling of an annotation: ``int | None``, ``'x_t' | 'cond'``, ``tuple[float, ...]``."""
    origin = get_origin(tp)
    if tp is Any:
        return "Any"
    if tp is type(None) or tp is None:
        return "None"
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{type_name(args[0])}, ...]"
        return f"tuple[{', '.join(type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def describe_value(value: Any, limit: int = 60) -> str:
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"


def field_types(config_cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation of a Config dataclass."""
    hints = get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}
