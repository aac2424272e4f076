"""Budget slices: how much of a tenant's remaining period budget a process leases, and when.

A process admits a hard-budget request against the leases it holds (`held` = their amounts,
less what they settled and what is reserved under them). The decision is pure:

    first slice   the remainder split among the live instances (FIRST_SHARE of it each), at
                  least SMALLEST_SLICE of the budget and at least the request's worst case;
                  one live instance leases the whole remainder (a single process behaves as
                  without leases: one lease, no top-ups until it is spent)
    top-up        when what a process holds free falls below TOP_UP_AT of its last slice, or
                  below the next request's worst case: it leases another slice
    the end       a remainder smaller than one more slice (plus a request's worst case) is taken
                  whole; a remainder smaller than the request's worst case is refused (402) — the
                  rest is held by other processes' leases, or spent

`lease_size` returns None for a refusal. The amount never exceeds the remainder, so
settled + reserved + leased ≤ budget whatever the interleaving (the conditional append on
`events.lease.BudgetSlices` makes every decision see the latest remainder).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from events.money import ZERO, usd

FIRST_SHARE = Decimal("0.5")
"""Of the remainder per live instance, taken as one slice: half, so the rest serves top-ups."""
SMALLEST_SLICE = Decimal("0.01")
"""Of the period budget: no slice smaller (a top-up per request would cost a write per request)."""
TOP_UP_AT = Decimal("0.25")
"""Of the last slice: below this much free, a process tops up before it runs dry."""


def lease_size(budget: Decimal, left: Decimal, need: Decimal, live: int) -> Decimal | None:
    """The slice to lease of `left` (unleased, unspent) for a request whose worst case is `need`
    (beyond what the process holds free already); None when `left` cannot cover it."""
    if need > left or left <= ZERO:
        return None
    if live <= 1:
        return left
    want = max(usd(left * FIRST_SHARE / live), usd(budget * SMALLEST_SLICE), need)
    if left - want < max(need, usd(budget * SMALLEST_SLICE)):
        return left  # what would be left is too small to serve anyone: take it all
    return want


def should_top_up(free: Decimal, last_slice: Decimal, need: Decimal = ZERO) -> bool:
    """Whether a process holding `free` (leased, neither settled nor reserved) leases more now."""
    return free < need or free < last_slice * TOP_UP_AT


def used(settled: Decimal, reserved: Decimal, amount: Decimal) -> Decimal:
    """What a closed lease counts as spent: its settled costs, plus the reservations still open under
    it (a gone instance's requests may yet settle up to them), never more than its amount."""
    return min(settled + reserved, amount)


def spread(used_usd: Decimal, amounts: Sequence[Decimal]) -> list[Decimal]:
    """What each of a process's leases (oldest first) used, when it gives them all back having
    settled `used_usd` under them: the oldest filled first, none beyond its amount."""
    left, spent = used_usd, []
    for amount in amounts:
        spent.append(min(left, amount))
        left -= spent[-1]
    return spent
