"""Argument checks of the synthetic generators: one ValueError sentence naming the argument."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_number", "check_integer", "check_pair"]


def check_number(
    name: str, value: object, low: float, high: float, *, open_low: bool = False
) -> float:
    """Return ``value`` as a float, or raise ValueError unless it is finite and in range."""
    is_real = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool
    )
    in_range = is_real and math.isfinite(value) and value <= high
    if in_range and (low < value if open_low else low <= value):
        return float(value)
    if math.isinf(high):
        bound = f"{'>' if open_low else '>='} {low:g}"
    else:
        bound = f"in {'(' if open_low else '['}{low:g}, {high:g}]"
    raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")


def check_integer(name: str, value: object, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int, or raise ValueError unless it is an integer in range."""
    is_int = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if is_int and low <= value and (high is None or value <= high):
        return int(value)
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ValueError(f"{name} must be an integer {bound}, got {value!r}.")


def check_pair(name: str, value: object, low: float, high: float) -> tuple[float, float]:
    """Return ``value`` as two floats, each finite and in [low, high], or raise ValueError."""
    try:
        first, second = value  # type: ignore[misc]
        return check_number(name, first, low, high), check_number(name, second, low, high)
    except (TypeError, ValueError):
        bound = "finite numbers" if math.isinf(high) else f"numbers in [{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a pair of {bound}, got {value!r}.") from None
