"""Money is `Decimal` USD, quantized to 1e-9 (a nano-dollar), and travels as a string.

Floats never touch money: `usd()` refuses them, so a float sneaking in is a bug found at once,
not a rounding error found by an auditor.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

USD_QUANTUM = Decimal("0.000000001")
MTOK = Decimal(1_000_000)
ZERO = Decimal(0)
MAX_INPUT_USD = Decimal(10) ** 12  # a trillion dollars: above any budget or price per million tokens


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


def usd_input(value: object) -> Decimal:
    """Parse an amount someone typed (config file, admin API): a decimal string or an integer that is
    finite, non-negative, at most `MAX_INPUT_USD`, and quantized to 1e-9 (rounding half to even).

    The one door for money coming in; raises `ValueError` with a message fit to show the sender
    (never `decimal.InvalidOperation`, which `Decimal("1e308").quantize(...)` would raise)."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f'expected a decimal string such as "0.50", got {value!r}')
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f'expected a decimal string such as "0.50", got {value!r}') from None
    if not amount.is_finite():
        raise ValueError(f"expected a finite amount, got {value!r}")
    if amount < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    if amount > MAX_INPUT_USD:
        raise ValueError(f"must be at most {MAX_INPUT_USD:,} USD, got {value!r}")
    return usd(amount)
