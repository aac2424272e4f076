"""An incremental Server-Sent Events decoder (the subset LLM providers use).

Feed it bytes as they arrive; it returns every event completed so far, so a relay can forward
everything already waiting in one write.
"""

from __future__ import annotations

import json
import re

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
    if block.startswith(b"data: ") and b"\n" not in block:  # the usual event: one data line, no name
        return SSEEvent(block[6:].decode("utf-8", "replace"))
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


# --- scanning an event's JSON text without parsing it ----------------------------------------------
#
# A relay parses only the events it must read. Both scans look at the text of one JSON object and
# are conservative: a key written with escapes (`"\u0075sage"`) is not recognised (no provider
# writes keys so), and `"` inside string values is always escaped, so text a model wrote can never
# look like a key here.

_USAGE = re.compile(r'"usage"\s*:\s*(null\b)?')
_CONTENT = re.compile(r'"content"\s*:\s*"((?:[^"\\]|\\.)*)"', re.DOTALL)


def carries_usage(text: str) -> bool:
    """Whether `text` has a `"usage"` member that is not `null` (at any depth: a false alarm only
    costs a parse)."""
    return '"usage"' in text and any(match.group(1) is None for match in _USAGE.finditer(text))


def content_size(text: str) -> int:
    """The UTF-8 size of every `"content"` string value in `text` (a chunk's `delta.content`, one per
    choice), decoding JSON escapes only in the values that have them."""
    size = 0
    if '"content"' not in text:
        return size
    for match in _CONTENT.finditer(text):
        literal = match.group(1)
        if "\\" in literal:
            literal = json.loads(f'"{literal}"')
        size += len(literal) if literal.isascii() else len(literal.encode())
    return size
