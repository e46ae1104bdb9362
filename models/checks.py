"""Config validation shared by every config dataclass in ``models/`` (reconstructors, DEQ settings,
networks): each check raises ``TypeError``/``ValueError`` naming the setting and what was expected."""

from __future__ import annotations


def check_int(name: str, value: object, minimum: int = 1, maximum: int | None = None) -> None:
    """``value`` is an int (not a bool) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def check_choice(name: str, value: object, choices: tuple[str, ...] | list[str]) -> None:
    """``value`` is one of ``choices`` (the message lists them)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_positive(name: str, value: object) -> None:
    """``value`` is a real number (not a bool) ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0.0:
        raise ValueError(f"{name} must be a float > 0, got {value!r}")
