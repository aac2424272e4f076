"""Money is `Decimal` USD, quantized to 1e-9 (a nano-dollar), and travels as a string.

Floats never touch money: `usd()` refuses them, so a float sneaking in is a bug found at once,
not a rounding error found by an auditor.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

USD_QUANTUM = Decimal("0.000000001")
MTOK = Decimal(1_000_000)
ZERO = Decimal(0)


def usd(value: Decimal | str | int) -> Decimal:
    """Return `value` as USD quantized to 1e-9, rounding half to even.

    Raises `TypeError` for floats and `ValueError` for strings that are not finite decimals.
    """
    if isinstance(value, float):  # bool is an int and harmless; float is the enemy
        raise TypeError("money must be a Decimal, int or decimal string, never a float")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return amount.quantize(USD_QUANTUM, rounding=ROUND_HALF_EVEN)


def usd_str(amount: Decimal) -> str:
    """The canonical string of an amount: fixed point, no exponent, no trailing zeros."""
    text = format(amount.normalize(), "f")
    return "0" if text in ("-0", "0") else text
