"""Unit constants and exact integer helpers. Imports nothing from the project.

Every quantity in the project carries its unit in its name (``memory_bytes``, ``latency_ns``); this
module holds the one definition of each prefix so that GB (10**9) and GiB (2**30) never drift.
"""

from __future__ import annotations

import math
from fractions import Fraction

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
KB = 10**3
MB = 10**6
GB = 10**9
TB = 10**12
TFLOPS = 10**12  # floating-point operations per second in one "TFLOPS"
BITS_PER_BYTE = 8
NS_PER_S = 10**9
US_PER_S = 10**6


def ceil_div(numerator: int, denominator: int) -> int:
    """``ceil(numerator / denominator)`` for integers, exactly (no float).

    Raises:
        ZeroDivisionError: if ``denominator`` is 0.
    """
    return -(-numerator // denominator)


def bytes_for(count: int, bits: Fraction | int) -> int:
    """Bytes needed to store ``count`` values of ``bits`` bits each, rounded up to a whole byte.

    ``bits`` may be a Fraction (MXFP4 stores 4 bits plus one 8-bit scale per 32 values: 17/4 bits).
    """
    if isinstance(bits, int):
        return ceil_div(count * bits, BITS_PER_BYTE)
    # count x p/q bits = count x p / (8 q) bytes, rounded up: integer arithmetic, no Fraction objects.
    return ceil_div(count * bits.numerator, bits.denominator * BITS_PER_BYTE)


def exact_decimal(value: float | int | str | Fraction) -> Fraction:
    """The exact decimal a user wrote (``0.05`` -> 1/20), not the nearest binary float."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, float):
        return Fraction(repr(value))
    return Fraction(value)


def is_finite_number(value: object) -> bool:
    """True for an int or float (not a bool) that is finite as a float: NaN, +-inf and integers past the
    float range (``1e400`` written as digits: ``math.isfinite`` raises OverflowError on them) are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def human_bytes(n_bytes: int) -> str:
    """``85899345920`` -> ``'80.00 GiB'``; for people only, never for comparisons."""
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if abs(n_bytes) >= size:
            return f"{n_bytes / size:.2f} {unit}"
    return f"{n_bytes} B"


DEFAULT_BUDGET_S = 60.0  # one wall-clock budget per command unless --time-limit says otherwise (DESIGN.md)
