"""`TenantPolicy.share`: each process's part of a tenant's rate limits when several serve it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policies.tenant import TenantPolicy

limits = st.none() | st.integers(min_value=1, max_value=100_000)


@given(limits, limits, limits, st.integers(min_value=1, max_value=64))
def test_the_parts_cover_the_limit_and_exceed_it_by_less_than_one_per_instance(
    rpm: int | None, tpm: int | None, max_parallel: int | None, instances: int
) -> None:
    policy = TenantPolicy(rpm=rpm, tpm=tpm, max_parallel=max_parallel)
    part = policy.share(instances)
    for name in ("rpm", "tpm", "max_parallel"):
        limit, share = getattr(policy, name), getattr(part, name)
        if limit is None:
            assert share is None
        else:
            assert limit <= share * instances <= limit + instances - 1
            assert share >= 1


def test_one_instance_keeps_the_policy_and_budgets_are_never_split() -> None:
    policy = TenantPolicy(rpm=0, tpm=10, budget_usd="5")  # type: ignore[arg-type]
    assert policy.share(1) is policy
    assert policy.share(3).budget_usd == policy.budget_usd
    assert policy.share(3).rpm == 0  # a zero limit stays zero
