"""`tollgate pricing import --from genai-prices`: pydantic's genai-prices catalogue as Tollgate prices.

The edge between the catalogue's data and `policies.cost.Price` (the gateway decides what to append,
`policies.catalogue`). Which prices are imported:

- **providers**: `--provider CATALOGUE=OURS` maps a genai-prices provider id to a configured provider
  (`--provider anthropic=claude-direct`); `--provider NAME` means the same name on both sides. Without
  `--provider`, every configured provider whose name is a genai-prices provider id (`openai`, `anthropic`,
  `groq`, ...). A provider is never mapped by its kind: an `openai`-kind provider may be a local vLLM.
- **models**: each model the provider serves (its `models` and the `[models]` aliases' deployments on it)
  is looked up with the catalogue's own match rules (`claude-3-5-haiku-20241022` finds
  `claude-3-5-haiku-latest`) and priced as `OURS/MODEL`, the name requests are costed under.
  `--models GLOB` keeps the models whose name (or catalogue id) matches one of the globs.
- **times**: a catalogue price without a start date applies from 1970-01-01 (whenever no later one
  does); a dated change from 00:00 UTC of its start date, as genai-prices applies it.
- **rates**: input_mtok, output_mtok, cache_read_mtok (cached input), cache_write_mtok (5-minute writes),
  cache_write_1h_mtok, requests_kcount (÷1000: the per-request fee); one tier of prices above N input
  tokens is the long-context tier. Web and file searches are tool fees Tollgate does not count: the
  token prices are imported with a note saying so. Request-context variants (`service_tier` flex or
  priority, batch) are not imported: noted. Anything else is **skipped** with its reason — audio, image,
  video, document or character prices, more than one tier, time-of-day (off-peak) prices, a model
  without an input or output price — never priced wrong.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import attrs

from policies.catalogue import CATALOGUE_EPOCH as EPOCH

RATES = {
    "input_mtok": "input_per_mtok",
    "output_mtok": "output_per_mtok",
    "cache_read_mtok": "cached_input_per_mtok",
    "cache_write_mtok": "cache_write_per_mtok",
    "cache_write_1h_mtok": "cache_write_1h_per_mtok",
}
UNCOUNTED = {"web_searches_kcount": "web searches", "storage_searches_kcount": "file searches"}


class CatalogueMissing(Exception):
    """genai-prices is not installed."""


@attrs.frozen
class Selection:
    """What the catalogue offers for the configured models: candidates for the gateway, and the skipped."""

    version: str
    prices: list[dict[str, Any]]
    skipped: list[dict[str, Any]]


class Unexpressible(Exception):
    """A catalogue price Tollgate's price model cannot express (the message says why)."""


def load() -> tuple[str, list[Any]]:
    """The installed genai-prices' version and its bundled providers."""
    try:
        import genai_prices
        from genai_prices.data_snapshot import get_snapshot
    except ImportError:
        raise CatalogueMissing(
            "genai-prices is not installed: pip install 'tollgate[catalogue]' (or pip install genai-prices)"
        ) from None
    return genai_prices.__version__, list(get_snapshot().providers)


def parse_mapping(given: Sequence[str] | None, catalogue_ids: Iterable[str], ours: Iterable[str]) -> dict[str, str]:
    """`--provider` values → {our provider: catalogue provider id}; problems raise ValueError."""
    ids, configured = set(catalogue_ids), list(ours)
    if not given:
        found = {name: name for name in configured if name in ids}
        if not found:
            raise ValueError(
                "no configured provider is named like a genai-prices provider: map one with "
                "--provider CATALOGUE=OURS, e.g. --provider anthropic=claude-direct"
            )
        return found
    mapping: dict[str, str] = {}
    for value in given:
        theirs, _, mine = value.partition("=")
        mine = mine or theirs
        if theirs not in ids:
            raise ValueError(f"--provider {value}: genai-prices has no provider {theirs!r} ({', '.join(sorted(ids))})")
        if mine not in configured:
            raise ValueError(f"--provider {value}: no configured provider named {mine!r} ({', '.join(configured)})")
        mapping[mine] = theirs
    return mapping


def select(
    version: str,
    providers: Sequence[Any],
    mapping: Mapping[str, str],
    served: Mapping[str, Sequence[str]],
    globs: Sequence[str] | None,
) -> Selection:
    """The price timelines of the models our mapped providers serve, as the admin API's import body."""
    by_id = {provider.id: provider for provider in providers}
    prices: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for ours, theirs in sorted(mapping.items()):
        provider = by_id[theirs]
        for model in served.get(ours, ()):
            key = f"{ours}/{model}"
            info = provider.find_model(model, all_providers=list(providers))
            if globs and not any(_matches(glob, model, info) for glob in globs):
                continue
            if info is None:
                skipped.append(_skip(key, f"not in genai-prices' {theirs} models"))
                continue
            try:
                timeline = _timeline(info)
            except Unexpressible as reason:
                skipped.append(_skip(key, f"{theirs}/{info.id}: {reason}"))
                continue
            for effective_from, price, note in timeline:
                notes = [f"genai-prices {theirs}/{info.id}", *([note] if note else []), *_variants(info)]
                prices.append(
                    {"key": key, "effective_from": effective_from.isoformat(), "price": price, "note": "; ".join(notes)}
                )
    return Selection(version, prices, skipped)


def _matches(glob: str, model: str, info: Any) -> bool:
    names = [model] if info is None else [model, info.id]
    return any(fnmatch.fnmatchcase(name.lower(), glob.lower()) for name in names)


def _skip(key: str, reason: str) -> dict[str, Any]:
    return {"key": key, "effective_from": None, "status": "skipped", "note": reason}


def _timeline(info: Any) -> list[tuple[datetime, dict[str, Any], str | None]]:
    """(effective_from, price as the admin API takes it, note) for each change of the model's price."""
    from genai_prices import types

    prices = info.prices
    if isinstance(prices, types.ModelPrice):
        moments = [EPOCH]
    else:
        constraints = [conditional.constraint for conditional in prices]
        if any(isinstance(c, types.TimeOfDateConstraint) for c in constraints):
            raise Unexpressible("time-of-day (off-peak) prices")
        starts = {c.start_date for c in constraints if isinstance(c, types.StartDateConstraint)}
        moments = [EPOCH, *(datetime.combine(d, time(), UTC) for d in sorted(starts) if _after_epoch(d))]
    timeline: list[tuple[datetime, dict[str, Any], str | None]] = []
    for moment in moments:
        price, note = _price(info.get_prices(moment))  # the catalogue's own rule for which price applies
        if not timeline or timeline[-1][1] != price:
            timeline.append((moment, price, note))
    return timeline


def _after_epoch(day: date) -> bool:
    return day > EPOCH.date()


def _price(model_price: Any) -> tuple[dict[str, Any], str | None]:
    from genai_prices import types

    values = {k: v for k, v in vars(model_price).items() if not k.startswith("_") and v is not None}
    notes = []
    for name, what in UNCOUNTED.items():
        if name in values:
            notes.append(f"{what} ({_text(values.pop(name))} USD per 1 000) not billed: Tollgate does not count them")
    fee = values.pop("requests_kcount", None)
    other = sorted(set(values) - set(RATES))
    if other:
        raise Unexpressible(f"prices {', '.join(other)} (Tollgate bills tokens and requests only)")
    for needed in ("input_mtok", "output_mtok"):
        if needed not in values:
            raise Unexpressible(f"no {needed} price")
    if isinstance(fee, types.TieredPrices):
        raise Unexpressible("a tiered per-request fee")
    tiered = {name: value for name, value in values.items() if isinstance(value, types.TieredPrices)}
    if any(len(value.tiers) != 1 for value in tiered.values()):
        raise Unexpressible("more than one price tier")
    if len({value.tiers[0].start for value in tiered.values()}) > 1:
        raise Unexpressible("price tiers at different input-token thresholds")
    price: dict[str, Any] = {}
    for name, value in values.items():
        price[RATES[name]] = _text(value.base if isinstance(value, types.TieredPrices) else value)
    if fee is not None:
        price["per_request_usd"] = _text(fee / 1000)
    if tiered:
        tier: dict[str, Any] = {"above_prompt_tokens": next(iter(tiered.values())).tiers[0].start}
        for name, value in values.items():
            if isinstance(value, types.TieredPrices):
                tier[RATES[name]] = _text(value.tiers[0].price)
            elif name in ("input_mtok", "output_mtok"):
                tier[RATES[name]] = _text(value)  # the tier keeps the flat rate
        price["long_context"] = tier
    return price, "; ".join(notes) or None


def _variants(info: Any) -> list[str]:
    if not info.price_variants:
        return []
    whens = sorted({", ".join(f"{k}={v}" for k, v in variant.when.items()) for variant in info.price_variants})
    return [f"variants not imported ({'; '.join(whens)}): such requests are costed at the standard price"]


def _text(value: Decimal) -> str:
    return format(value.normalize(), "f")
