"""What an operator's constructor accepts, declared by the operator class itself.

Every operator class lists its settable constructor arguments in ``SETTINGS`` (name -> `Setting`):
the type, the range or the choices. Sweep files, spec validation and any other caller ask the class
(``operators.check_operator_kwargs("ct", {"n_angles": 30})``) instead of keeping their own table, so a new
argument is settable everywhere once the class declares it. ``image_size`` is not a setting (it is
a task size, set on its own), nor are explicit tensors (a blur ``kernel``, an MRI ``mask``): the
settings that generate them (kernel size and sigma; mask type, acceleration, centre fraction, seed)
are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One constructor argument: ``kind`` int, float, str or "floats" (a non-empty list of numbers).

    ``minimum``/``maximum`` bound numbers (and every element of "floats"); ``open_minimum`` makes the
    lower bound exclusive; ``choices`` (when not empty) lists the only accepted values.
    """

    kind: str
    minimum: float | None = None
    maximum: float | None = None
    open_minimum: bool = False
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        """What is accepted, e.g. ``"an int >= 1"``, ``"one of 'csr', 'grid_sample'"``."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        noun = {
            "int": "an int",
            "float": "a number",
            "str": "a string",
            "floats": "a non-empty list of numbers",
        }
        parts = [noun[self.kind]]
        if self.minimum is not None:
            parts.append(f"{'>' if self.open_minimum else '>='} {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"<= {self.maximum:g}")
        return " ".join(parts[:1]) + (" " + " and ".join(parts[1:]) if parts[1:] else "")

    def _number(self, value: Any, integer: bool) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError
        if integer and not isinstance(value, int):
            raise ValueError
        if not math.isfinite(value):
            raise ValueError
        low_ok = self.minimum is None or (
            value > self.minimum if self.open_minimum else value >= self.minimum
        )
        if not low_ok or (self.maximum is not None and value > self.maximum):
            raise ValueError
        return value

    def check(self, value: Any) -> Any:
        """The value in canonical form (float for "float", a tuple of floats for "floats"), or ValueError."""
        if self.kind == "floats":
            if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
                raise ValueError
            return tuple(float(self._number(v, integer=False)) for v in value)
        if self.kind == "str":
            if not isinstance(value, str):
                raise ValueError
        elif self.kind == "int":
            value = self._number(value, integer=True)
        else:
            value = float(self._number(value, integer=False))
        if self.choices and value not in self.choices:
            raise ValueError
        return value


def check_settings(owner: str, settings: Mapping[str, Setting], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` checked against ``settings`` and put in canonical form; the error names ``owner``,
    the key, and the accepted keys or values."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key not in settings:
            raise ValueError(f"{owner} has no setting {key!r}; accepted settings: {sorted(settings)}")
        try:
            out[key] = settings[key].check(value)
        except ValueError:
            raise ValueError(
                f"{owner}: setting {key!r} must be {settings[key].describe()}, got {value!r}"
            ) from None
    return out
