"""A cached answer: what the response cache stores, how a stream fills it, how a hit is replayed.

An entry is the whole OpenAI `chat.completion` object (without `x_gateway`), the usage billed for it
and the deployment that produced it (where a hit's saving is priced). A complete, successful stream
fills one by assembling its chunks (role, text and tool calls per choice); a stream request answered
from the cache gets it back in OpenAI's stream format: a role chunk, a content chunk, a finish chunk
per choice, the usage chunk when the client asked `stream_options.include_usage`, then `[DONE]`.
Only answers whose every choice finished normally (not `error`, not missing) are stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import attrs

from events.usage import Usage
from policies.routing import Deployment

DONE = b"data: [DONE]\n\n"
DELTA_FIELDS = frozenset({"role", "content", "tool_calls", "refusal"})


@attrs.frozen
class CachedAnswer:
    completion: dict[str, Any]
    usage: Usage
    served: Deployment

    def encode(self) -> bytes:
        usage = self.usage
        return json.dumps(
            {
                "completion": self.completion,
                "usage": [usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.source],
                "served": [self.served.provider, self.served.model],
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> CachedAnswer:
        entry = json.loads(data)
        prompt, completion, cached, source = entry["usage"]
        provider, model = entry["served"]
        return cls(entry["completion"], Usage(prompt, completion, cached, source), Deployment(provider, model))

    def body(self) -> dict[str, Any]:
        """A fresh copy of the completion, for one answer to own."""
        copy: dict[str, Any] = json.loads(json.dumps(self.completion))
        return copy

    def replay(self, include_usage: bool, x_gateway: dict[str, Any]) -> bytes:
        """The answer as one OpenAI SSE stream, `x_gateway` on the last chunk (the usage chunk, or
        each choice's finish chunk when no usage chunk was asked for)."""
        base = {
            "id": self.completion.get("id"),
            "object": "chat.completion.chunk",
            "created": self.completion.get("created"),
            "model": self.completion.get("model"),
        }
        if (fingerprint := self.completion.get("system_fingerprint")) is not None:
            base["system_fingerprint"] = fingerprint
        chunks: list[dict[str, Any]] = []
        for choice in self.completion.get("choices") or ():
            index = choice.get("index", 0)
            message = choice.get("message") or {}
            chunks.append({**base, "choices": [{"index": index, "delta": {"role": message.get("role", "assistant")}}]})
            delta = {name: message[name] for name in ("content", "refusal") if message.get(name) is not None}
            if message.get("tool_calls"):
                delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
            if delta:
                chunks.append({**base, "choices": [{"index": index, "delta": delta}]})
            finish = {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}
            chunks.append({**base, "choices": [finish]})
        if include_usage:
            chunks.append({**base, "choices": [], "usage": self.completion.get("usage") or self.usage.as_openai()})
        if chunks:
            chunks[-1]["x_gateway"] = x_gateway
        text = "".join(f"data: {json.dumps(chunk, separators=(',', ':'), ensure_ascii=False)}\n\n" for chunk in chunks)
        return text.encode() + DONE


def cacheable(completion: dict[str, Any]) -> bool:
    """A whole answer whose every choice finished normally."""
    choices = completion.get("choices")
    return (
        isinstance(choices, list)
        and bool(choices)
        and all(isinstance(c, dict) and c.get("finish_reason") not in (None, "error") for c in choices)
    )


def assemble(chunks: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The `chat.completion` a stream's chunks amount to; None when they carry something this does
    not know how to replay (a delta field other than role, content, tool calls, refusal)."""
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    usage: Any = None
    for chunk in chunks:
        if not head:
            head = {name: chunk.get(name) for name in ("id", "created", "model")}
            if chunk.get("system_fingerprint") is not None:
                head["system_fingerprint"] = chunk["system_fingerprint"]
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            into = choices.setdefault(
                index, {"index": index, "message": {"role": "assistant", "content": None}, "finish_reason": None}
            )
            delta = choice.get("delta") or {}
            if any(value is not None for name, value in delta.items() if name not in DELTA_FIELDS):
                return None
            message = into["message"]
            if delta.get("role"):
                message["role"] = delta["role"]
            for name in ("content", "refusal"):
                if delta.get(name):
                    message[name] = (message.get(name) or "") + delta[name]
            for call in delta.get("tool_calls") or ():
                calls = message.setdefault("tool_calls", [])
                position = call.get("index", len(calls))
                while len(calls) <= position:
                    calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                target = calls[position]
                if call.get("id"):
                    target["id"] = call["id"]
                function = call.get("function") or {}
                target["function"]["name"] += function.get("name") or ""
                target["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason") is not None:
                into["finish_reason"] = choice["finish_reason"]
    completion = {**head, "object": "chat.completion", "choices": [choices[i] for i in sorted(choices)]}
    if usage is not None:
        completion["usage"] = usage
    return completion


class Replay:
    """A cached answer's stream body: the whole replay in one write (the HTTP edge closes it like a relay)."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> Replay:
        return self

    async def __anext__(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise StopAsyncIteration
        return data

    async def aclose(self, reason: str | None = None) -> None:
        self._data = None  # settled already: nothing to record
