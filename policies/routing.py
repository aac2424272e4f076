"""The routing index: public model name → deployments, and the order candidates are tried in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs


@attrs.frozen
class Deployment:
    """One place a public model name is served: a provider and that provider's name for the model."""

    provider: str
    model: str


class RoutingIndex:
    """O(1) lookup of a public model name.

    Built from each provider's `models` (in config order) and `[models.NAME]` aliases; an alias
    replaces a provider-listed name it collides with. `PROVIDER/MODEL` always addresses that
    provider directly, for any provider the index knows.
    """

    def __init__(self, routes: Mapping[str, tuple[Deployment, ...]], providers: Iterable[str]) -> None:
        self._routes = dict(routes)
        self._providers = frozenset(providers)

    @classmethod
    def build(
        cls, provider_models: Sequence[tuple[str, Sequence[str]]], aliases: Mapping[str, Sequence[Deployment]]
    ) -> RoutingIndex:
        routes: dict[str, list[Deployment]] = {}
        for provider, models in provider_models:
            for model in models:
                routes.setdefault(model, []).append(Deployment(provider, model))
        for alias, deployments in aliases.items():
            routes[alias] = list(deployments)
        return cls({name: tuple(found) for name, found in routes.items()}, (p for p, _ in provider_models))

    def lookup(self, model: str) -> tuple[Deployment, ...]:
        found = self._routes.get(model)
        if found is not None:
            return found
        provider, slash, upstream_model = model.partition("/")
        if slash and upstream_model and provider in self._providers:
            return (Deployment(provider, upstream_model),)
        return ()

    def models(self) -> list[str]:
        return list(self._routes)

    def serves(self, model: str) -> bool:
        """A request for `model` has somewhere to go (a listed name, an alias or `PROVIDER/MODEL`)."""
        return bool(self.lookup(model))

    def knows_provider(self, name: str) -> bool:
        return name in self._providers


def order_candidates(
    deployments: Sequence[Deployment], default_provider: str | None, fallback_providers: Sequence[str]
) -> tuple[Deployment, ...]:
    """The tenant's default provider first, then its fallbacks in order, then config order — the
    same order every time (a stable sort, never a map's iteration order)."""
    preferred = [p for p in (default_provider, *fallback_providers) if p]
    rank = {provider: index for index, provider in reversed(list(enumerate(preferred)))}
    return tuple(sorted(deployments, key=lambda d: rank.get(d.provider, len(preferred))))
