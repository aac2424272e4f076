"""OpenAI's `x-ratelimit-*` response headers, from a tenant's quota levels (`policies.ratelimit.Quota`).

For each limit kind ("requests", "tokens"): `x-ratelimit-limit-KIND`, `x-ratelimit-remaining-KIND`
(whole units available now) and `x-ratelimit-reset-KIND` (seconds until the quota is full again,
as `"1.500s"`). Sent on admitted requests and on 429s alike; a tenant without limits gets none.
"""

from __future__ import annotations

from collections.abc import Mapping

from policies.ratelimit import Quota


def quota_headers(quotas: Mapping[str, Quota]) -> dict[str, str]:
    headers = {}
    for kind, quota in quotas.items():
        headers[f"x-ratelimit-limit-{kind}"] = str(quota.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(quota.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = f"{quota.reset_s:.3f}s"
    return headers
