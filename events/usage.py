"""Token usage: a fact reported by a provider, or estimated by the gateway and flagged as such."""

from __future__ import annotations

from typing import Any, Literal

import attrs

UsageSource = Literal["provider", "estimated", "provider_invalid", "provider_capped", "unknown"]
"""How the counts were obtained; `policies.usage` documents each value. `unknown`: nobody knows —
the gateway stopped while the request was in flight (crash recovery records it with counts 0 and
cost None: neither a $0 nor unpriced, a state of its own)."""

UNKNOWN_USAGE = "unknown"


@attrs.frozen
class Usage:
    """Tokens one request consumed.

    `cached_tokens` counts prompt tokens served from the provider's prompt cache; for OpenAI-style
    providers they are included in `prompt_tokens` (Anthropic's adapter normalises to that rule).
    `cache_write_tokens` counts prompt tokens written to the provider's prompt cache (Anthropic's
    `cache_creation_input_tokens`, also included in `prompt_tokens`), `cache_write_1h_tokens` the
    part of them written with a 1-hour lifetime (billed at their own rates, `policies.cost`).
    `reported` is the provider's usage object as it came, when one was read (not part of equality:
    two usages with the same counts and source are the same usage); `policies.usage` records it
    when what is billed differs from it.
    """

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    source: UsageSource = "provider"
    reported: Any = attrs.field(default=None, eq=False, repr=False)
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_openai(self) -> dict[str, object]:
        """The OpenAI `usage` object."""
        body: dict[str, object] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_tokens:
            body["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return body

    @classmethod
    def from_openai(cls, usage: object) -> Usage | None:
        """Read an OpenAI `usage` object; None when absent. Counts that are not integers make a
        usage with source `provider_invalid` (counts 0): reported, but unreadable. Whether readable
        counts are acceptable is `policies.usage`'s decision, not this reader's."""
        if not isinstance(usage, dict) or ("prompt_tokens" not in usage and "completion_tokens" not in usage):
            return None
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens", 0)
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
        if cached is None:
            cached = 0
        if type(prompt) is not int or type(completion) is not int or type(cached) is not int:
            return cls(0, 0, 0, "provider_invalid", usage)
        return cls(prompt, completion, cached, reported=usage)
