"""A simple, documented token estimate, used by the simulator and for cut-off streams.

    tokens(text)      = ceil(UTF-8 bytes of text / 4)
    prompt(messages)  = 3 + Σ (4 + tokens(role) + tokens(text content))

It is close to OpenAI's tokenizers for English prose and never needs a download.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def estimate_tokens(text: str) -> int:
    return (len(text.encode()) + 3) // 4


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a chat message: a string content, or the text parts of a list content."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def estimate_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    total = 3
    for message in messages:
        role = message.get("role")
        total += 4 + estimate_tokens(role if isinstance(role, str) else "") + estimate_tokens(message_text(message))
    return total


def requested_max_tokens(body: Mapping[str, Any]) -> int | None:
    """The output limit a chat request asks for: `max_completion_tokens`, else `max_tokens`, else None."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
