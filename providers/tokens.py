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


def embedding_inputs(value: object) -> list[str | list[int]]:
    """An embeddings request's `input` as a list of inputs: each a text or a list of token ids (a
    string, a list of strings, a list of token ids and a list of such lists are its four forms).
    Anything else yields what it can; validating is `policies.embeddings`'s business."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return []
    if value and all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return [list(value)]
    return [item for item in value if isinstance(item, str | list)]


def estimate_input_tokens(value: object) -> int:
    """The input tokens of an embeddings request's `input`: `estimate_tokens` of each text, and one
    per token id of each token list (those are counted exactly)."""
    return sum(estimate_tokens(item) if isinstance(item, str) else len(item) for item in embedding_inputs(value))
