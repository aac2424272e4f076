"""A tenant's policy: budget, rate limits, allowed models and provider preferences.

Stored in `Tenant` events as a dict of JSON primitives (`to_record`), read back by `from_record`.
Absent limits mean "no limit"; a budget of "0" means nothing may be spent (unlike a seed project,
where 0 silently meant unlimited).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any, Literal

import attrs

from events.money import usd, usd_str
from policies.routing import RoutingIndex


def _optional_ge(minimum: int) -> Any:
    return attrs.validators.optional(attrs.validators.ge(minimum))


def _budget(value: Decimal | None) -> Decimal | None:
    return None if value is None else usd(value)


@attrs.frozen
class TenantPolicy:
    budget_usd: Decimal | None = attrs.field(default=None, converter=_budget)
    budget_period: Literal["month", "week", "day"] = "month"
    budget_mode: Literal["hard", "soft"] = "hard"
    rpm: int | None = attrs.field(default=None, validator=_optional_ge(0))
    tpm: int | None = attrs.field(default=None, validator=_optional_ge(0))
    max_parallel: int | None = attrs.field(default=None, validator=_optional_ge(1))
    allowed_models: tuple[str, ...] = ()
    default_provider: str | None = None
    fallback_providers: tuple[str, ...] = ()

    @budget_usd.validator
    def _check_budget(self, _: Any, value: Decimal | None) -> None:
        if value is not None and value < 0:
            raise ValueError(f"'budget_usd' must not be negative, got {value}")

    def share(self, instances: int) -> TenantPolicy:
        """This process's share of the rate limits and `max_parallel` when `instances` processes
        serve the tenant: each limit divided among them, rounded up (so the tenant is never held
        below its limit by the split: all together admit at most limit + instances − 1; a tenant
        whose traffic reaches only some of the processes gets less than its limit). Budgets are
        not split here: they are kept across processes by the tenant actor (`runtime.actors.tenant`)."""
        if instances <= 1:
            return self

        def part(limit: int | None) -> int | None:
            return None if limit is None else -(-limit // instances)

        return attrs.evolve(self, rpm=part(self.rpm), tpm=part(self.tpm), max_parallel=part(self.max_parallel))

    def to_record(self) -> dict[str, Any]:
        record = attrs.asdict(self, recurse=False)
        record["budget_usd"] = None if self.budget_usd is None else usd_str(self.budget_usd)
        record["allowed_models"] = list(self.allowed_models)
        record["fallback_providers"] = list(self.fallback_providers)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TenantPolicy:
        known = {field.name for field in attrs.fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        if values.get("budget_usd") is not None:
            values["budget_usd"] = Decimal(values["budget_usd"])
        for name in ("allowed_models", "fallback_providers"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


POLICY_FIELDS = tuple(field.name for field in attrs.fields(TenantPolicy))


def reference_problems(
    policy: TenantPolicy, routes: RoutingIndex, fields: Iterable[str] = POLICY_FIELDS
) -> list[tuple[str, str]]:
    """`(field, problem)` for each name among `fields` of `policy` that `routes` does not know, in
    field order: `default_provider` and `fallback_providers` must name configured providers, and each
    of `allowed_models` a model the gateway serves (a provider's model, an alias, or `PROVIDER/MODEL`
    of a configured provider). One check for `check-config` and the admin API alike. It catches typos;
    admission does not depend on it (a stale name simply matches nothing)."""
    wanted = set(fields)
    problems: list[tuple[str, str]] = []
    providers = {
        "default_provider": [] if policy.default_provider is None else [policy.default_provider],
        "fallback_providers": list(policy.fallback_providers),
    }
    for field, names in providers.items():
        if field in wanted:
            problems.extend((field, f"no provider named {name!r}") for name in names if not routes.knows_provider(name))
    if "allowed_models" in wanted:
        problems.extend(
            (
                "allowed_models",
                f"no model named {model!r} is served (not a provider's model, an alias, or PROVIDER/MODEL"
                " of a configured provider)",
            )
            for model in policy.allowed_models
            if not routes.serves(model)
        )
    return problems
