"""Type checks of sweep values: `coerce(value, tp)` returns the value as the annotated type or raises
TypeError, `type_name(tp)` names a type for error messages (``int or None``, ``one of 'a', 'b'``)."""

from __future__ import annotations

import types
import typing
from typing import Any


def type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any) -> Any:
    """Return value as type tp (int accepted for float), or raise TypeError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            if arm is type(None):
                continue
            try:
                return coerce(value, arm)
            except TypeError:
                pass
        raise TypeError(type_name(tp))
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise TypeError(type_name(tp))
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise TypeError("float")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError("int")
    if tp in (str, bool):
        if isinstance(value, tp):
            return value
        raise TypeError(tp.__name__)
    if tp is Any or not isinstance(tp, type):
        return value
    if isinstance(value, tp):
        return value
    raise TypeError(type_name(tp))
