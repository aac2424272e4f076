"""An incremental Server-Sent Events decoder (the subset LLM providers use).

Feed it bytes as they arrive; it returns every event completed so far, so a relay can forward
everything already waiting in one write.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class SSEEvent:
    data: str
    event: str = "message"


class SSEDecoder:
    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *blocks, self._buffer = buffer.split(b"\n\n")
        events = []
        for block in blocks:
            event = _parse_block(block)
            if event is not None:
                events.append(event)
        return events

    @property
    def pending(self) -> bool:
        """Whether an incomplete event is buffered (a stream that ends here was cut)."""
        return bool(self._buffer.strip())


def _parse_block(block: bytes) -> SSEEvent | None:
    data: list[str] = []
    name = "message"
    for raw in block.split(b"\n"):
        if not raw or raw.startswith(b":"):
            continue
        field, _, value = raw.decode("utf-8", "replace").partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    if not data:
        return None
    return SSEEvent("\n".join(data), name)
