"""Routing as the pure decisions it is (`policies.routing`): the index and the candidates' order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policies.routing import Deployment, RoutingIndex, order_candidates

PROVIDERS = ["a", "b", "c", "d"]
deployments = st.lists(st.sampled_from(PROVIDERS), unique=True).map(lambda ps: [Deployment(p, "m") for p in ps])


@given(deployments, st.one_of(st.none(), st.sampled_from(PROVIDERS)), st.lists(st.sampled_from(PROVIDERS)))
def test_candidates_are_the_default_then_the_fallbacks_then_config_order(
    found: list[Deployment], default: str | None, fallbacks: list[str]
) -> None:
    ordered = order_candidates(found, default, fallbacks)
    assert sorted(ordered, key=found.index) == found, "a permutation of the deployments"
    assert order_candidates(found, default, fallbacks) == ordered, "the same order every time"
    preferred = list(dict.fromkeys(p for p in (default, *fallbacks) if p))
    served = {d.provider for d in found}
    expected = [p for p in preferred if p in served] + [d.provider for d in found if d.provider not in preferred]
    assert [d.provider for d in ordered] == expected


def test_the_index_finds_listed_names_aliases_and_provider_slash_model() -> None:
    index = RoutingIndex.build(
        [("a", ["m1", "m2"]), ("b", ["m1"])], {"m2": [Deployment("b", "big")], "fast": [Deployment("a", "m1")]}
    )
    assert index.lookup("m1") == (Deployment("a", "m1"), Deployment("b", "m1")), "config order"
    assert index.lookup("m2") == (Deployment("b", "big"),), "an alias replaces a listed name"
    assert index.lookup("fast") == (Deployment("a", "m1"),)
    assert index.lookup("b/anything") == (Deployment("b", "anything"),)
    assert index.lookup("z/m1") == () and index.lookup("a/") == () and index.lookup("nope") == ()
    assert index.serves("a/x") and not index.serves("nope")
    assert index.knows_provider("b") and not index.knows_provider("z")
    assert index.models() == ["m1", "m2", "fast"]
