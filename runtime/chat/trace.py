"""Our span in a W3C trace: the value the request carries upstream and back (headers are parsed at the edge)."""

from __future__ import annotations

import attrs


@attrs.frozen
class Trace:
    """Our span in a trace: `trace_id` is shared with the caller, `span_id` is ours."""

    trace_id: str
    span_id: str
    flags: str = "01"
    parent_id: str | None = None  # the client's span, when it sent a valid `traceparent`

    @property
    def traceparent(self) -> str:
        """The header naming our span as parent: sent upstream and returned to the client."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"
