"""Argument checks shared by the callbacks' ``__init__`` (each error names the argument and what is allowed)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_filter_fn", "check_int", "check_number", "is_int"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an int and not a bool.

    Example:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int, hint: str = "", *, optional: bool = False) -> None:
    """Raises ``ValueError`` unless ``value`` is an int ``>= minimum`` (or ``None`` when ``optional``).

    Args:
        name: the argument's name, for the message.
        value: what was given.
        minimum: the smallest allowed value.
        hint: a sentence appended to the message (the fix).
        optional: ``None`` is allowed too.

    Example:
        >>> check_int("steps", 0, 1, "Pass steps=1.")
        Traceback (most recent call last):
        ...
        ValueError: `steps` must be an int >= 1, got 0. Pass steps=1.
    """
    if optional and value is None:
        return
    if not is_int(value) or value < minimum:
        allowed = f"None or an int >= {minimum}" if optional else f"an int >= {minimum}"
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}." + (f" {hint}" if hint else ""))


def check_number(
    name: str, value: Any, low: float, high: float, *, low_open: bool = True, hint: str = "", kind: str = "number"
) -> float:
    """Returns ``float(value)``; raises ``ValueError`` unless it is a finite number in the interval.

    The interval is ``(low, high]`` (``low_open``) or ``[low, high)``; ``kind`` names what is expected.

    Example:
        >>> check_number("threshold", 2.0, 0.0, 1.0, low_open=False)
        Traceback (most recent call last):
        ...
        ValueError: `threshold` must be a number in [0, 1), got 2.0.
    """
    interval = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g})"
    inside = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (low < value <= high if low_open else low <= value < high)
    )
    if not inside:
        raise ValueError(f"`{name}` must be a {kind} in {interval}, got {value!r}." + (f" {hint}" if hint else ""))
    return float(value)


def check_filter_fn(filter_fn: Any) -> None:
    """Raises ``TypeError`` unless ``filter_fn`` is ``None`` or callable as ``filter_fn(module, fqn) -> bool``.

    Example:
        >>> check_filter_fn("conv")
        Traceback (most recent call last):
        ...
        TypeError: `filter_fn` must be callable as filter_fn(module, fqn) -> bool, got 'conv'.
    """
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"`filter_fn` must be callable as filter_fn(module, fqn) -> bool, got {filter_fn!r}.")
