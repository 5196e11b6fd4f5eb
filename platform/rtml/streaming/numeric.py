"""PostgreSQL ``numeric`` arithmetic, digit for digit, for the aggregates ``customer_features`` computes.

``avg`` and ``stddev_samp`` over ``numeric`` do not round like floats: PostgreSQL divides with a result
scale chosen by ``select_div_scale`` (at least 16 significant digits, base-10000 weights), rounds half away
from zero, takes the square root at the same scale, and only the final ``::double precision`` cast turns
the decimal text into the nearest double. Reproducing those steps exactly (integer arithmetic, no
floating point) gives the same doubles bit for bit; a float computation would differ in the last bits.
The parity test (tests/test_streaming_features.py) checks every result against PostgreSQL.

A value is a :class:`Num`: an integer and PostgreSQL's display scale (``Num(1230, 2)`` is ``12.30``).
Plain integers rather than ``Decimal``: the scorer runs this on every request, and ``Decimal``'s
conversions to digits and back cost most of its time (a merged read: 405 → 111 us, docs/benchmarks.md).
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple

NUMERIC_MIN_SIG_DIGITS = 16
DEC_DIGITS = 4  # decimal digits per base-10000 digit (NBASE)
NUMERIC_MAX_DISPLAY_SCALE = 1000
_CENT = Decimal("0.01")


class Num(NamedTuple):
    """``unscaled * 10**-scale``, ``scale >= 0``: a numeric value and its display scale."""

    unscaled: int
    scale: int

    def to_decimal(self) -> Decimal:
        return Decimal(self.unscaled).scaleb(-self.scale)


def amount_cents(amount: float) -> int:
    """``round(amount::numeric, 2)`` of a double (stg_transactions), in cents: float8 → numeric keeps 15
    significant digits, then rounds half away from zero (the rule ingest validation uses too)."""
    return int(amount_numeric(amount).scaleb(2))


def amount_numeric(amount: float) -> Decimal:
    """``round(amount::numeric, 2)`` of a double, as a ``Decimal`` of scale 2."""
    return Decimal(f"{amount:.15g}").quantize(_CENT, ROUND_HALF_UP)


def _weight_and_first_digit(value: Num) -> tuple[int, int]:
    """The weight (position of the leading base-10000 digit; 0 = units) and that digit; (0, 0) for 0."""
    integer, scale = abs(value.unscaled), value.scale
    if integer == 0:
        return 0, 0
    weight = (len(str(integer)) - 1 - scale) // DEC_DIGITS
    shift = -scale - DEC_DIGITS * weight  # first digit = floor(integer * 10**shift)
    return weight, (integer * 10**shift if shift >= 0 else integer // 10**-shift)


def select_div_scale(dividend: Num, divisor: Num) -> int:
    """PostgreSQL's result scale of ``dividend / divisor`` (numeric.c, ``select_div_scale``)."""
    weight1, first1 = _weight_and_first_digit(dividend)
    weight2, first2 = _weight_and_first_digit(divisor)
    qweight = weight1 - weight2
    if first1 <= first2:
        qweight -= 1
    rscale = NUMERIC_MIN_SIG_DIGITS - qweight * DEC_DIGITS
    rscale = max(rscale, dividend.scale, divisor.scale, 0)
    return min(rscale, NUMERIC_MAX_DISPLAY_SCALE)


def _round_half_away(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half away from zero (denominator > 0)."""
    quotient, remainder = divmod(abs(numerator), denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    return -quotient if numerator < 0 else quotient


def subtract(left: Num, right: Num) -> Num:
    """``left - right`` (the larger scale, as ``sub_var``)."""
    scale = max(left.scale, right.scale)
    return Num(
        left.unscaled * 10 ** (scale - left.scale) - right.unscaled * 10 ** (scale - right.scale), scale
    )


def divide(dividend: Num, divisor: Num, rscale: int | None = None) -> Num:
    """``dividend / divisor`` as numeric division: exact quotient rounded half away from zero at
    ``select_div_scale`` (or ``rscale``)."""
    if divisor.unscaled == 0:
        raise ZeroDivisionError("numeric division by zero")
    rscale = select_div_scale(dividend, divisor) if rscale is None else rscale
    a, b = dividend.unscaled, divisor.unscaled
    if b < 0:
        a, b = -a, -b
    # dividend / divisor * 10**rscale = a * 10**(scale_b - scale_a + rscale) / b
    shift = divisor.scale - dividend.scale + rscale
    numerator, denominator = (a * 10**shift, b) if shift >= 0 else (a, b * 10**-shift)
    return Num(_round_half_away(numerator, denominator), rscale)


def sqrt(value: Num, rscale: int) -> Num:
    """Square root at ``rscale`` digits, rounded half away from zero (``sqrt_var``)."""
    a, scale = value
    if a < 0:
        raise ValueError("square root of a negative number")
    # floor(sqrt(value) * 10**(rscale + 1)), then round the last digit away
    shift = 2 * (rscale + 1) - scale
    scaled = a * 10**shift if shift >= 0 else a // 10**-shift
    root, last = divmod(math.isqrt(scaled), 10)
    return Num(root + (1 if last >= 5 else 0), rscale)


def avg(count: int, total: Num) -> Num | None:
    """``avg(x)`` of ``count`` numeric values summing to ``total`` (``numeric_avg``); NULL when empty.
    Also ``avg`` of integers (``int8_avg``: the integer sum and count, divided as numeric)."""
    if count == 0:
        return None
    return divide(total, Num(count, 0))


def stddev_samp(count: int, total: Num, total_of_squares: Num) -> Num | None:
    """``stddev_samp(x)`` from the count, sum and sum of squares (``numeric_stddev_internal``):
    sqrt((N * sum(x^2) - sum(x)^2) / (N * (N - 1))) with PostgreSQL's scales; NULL for N <= 1; 0 when the
    numerator is not positive."""
    if count <= 1:
        return None
    s, s_scale = total
    q, q_scale = total_of_squares
    scale = max(2 * s_scale, q_scale)  # mul_var at sum's scale * 2; sub_var keeps the larger scale
    numerator_int = count * q * 10 ** (scale - q_scale) - s * s * 10 ** (scale - 2 * s_scale)
    if numerator_int <= 0:
        return Num(0, 0)
    numerator = Num(numerator_int, scale)
    denominator = Num(count * (count - 1), 0)
    rscale = select_div_scale(numerator, denominator)
    variance = divide(numerator, denominator, rscale)
    return sqrt(variance, rscale)


def to_double(value: Num | None) -> float | None:
    """``::double precision``: the nearest double to the decimal value (numeric_float8 parses its text;
    Python's int / int is correctly rounded too)."""
    return None if value is None else value.unscaled / 10**value.scale
