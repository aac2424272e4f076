"""Anthropic's Messages API (`POST {base_url}/messages`) behind the gateway's OpenAI face.

Request, OpenAI chat → Anthropic Messages:

    system / developer messages   all of them, in order, joined by a blank line → top-level `system`
    user / assistant / tool       content blocks; consecutive same-role messages merged into one; a
                                  conversation that does not start with `user` gets a "." user turn first
    content parts                 text → text; image_url (data: URL → base64 source, http(s) → url
                                  source) → image; `cache_control` is kept; other parts (audio, file) dropped
    assistant tool_calls          tool_use blocks (arguments parsed from JSON)
    tool messages                 user tool_result blocks
    max_completion_tokens / max_tokens   → max_tokens, else the provider's default (it is required)
    temperature, top_p, top_k     as is;  stop (string or list) → stop_sequences;  user → metadata.user_id
    tools [{type: function}]      [{name, description, input_schema}]
    tool_choice                   auto → auto, required → any, none → none, {function: {name}} → tool;
                                  parallel_tool_calls: false → disable_parallel_tool_use
    anything else (n, seed, response_format, logprobs, functions, ...) is not sent.

Response → OpenAI `chat.completion`: text blocks joined into `content`, tool_use blocks → `tool_calls`,
stop_reason → finish_reason (`FINISH_REASONS`). Usage is normalised to OpenAI's rule, where the prompt
includes cached tokens (Anthropic's `input_tokens` excludes them):

    prompt_tokens = input_tokens + cache_read_input_tokens + cache_creation_input_tokens
    prompt_tokens_details = {cached_tokens: cache_read_input_tokens,
                             cache_creation_tokens: cache_creation_input_tokens}
    cache_write_tokens = cache_creation_input_tokens          (billed at the cache-write rates)
    cache_write_1h_tokens = cache_creation.ephemeral_1h_input_tokens   (the 1-hour part of them)

Streams: `AnthropicStreamDecoder` turns the event sequence (message_start, content_block_start/delta/
stop, message_delta, message_stop, ping, error) into OpenAI chunks: a role chunk, content and
tool-call deltas, then at message_stop one finish chunk and one usage chunk (`choices: []`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import httpx

from events.usage import Usage
from providers.errors import MalformedResponse, ProviderError, UpstreamRejected, error_for_status, json_answer
from providers.http import Endpoint, SSEChunkStream, secrets_of
from providers.sse import SSEEvent
from providers.tokens import message_text, requested_max_tokens
from providers.upstream import Call, Chunk, Completion, Timeouts

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
PLACEHOLDER_USER_TEXT = "."

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# OpenAI finish_reason → Anthropic stop_reason, for answers the gateway writes in Anthropic's format
# (the inverse of FINISH_REASONS on the reasons it produces).
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
# OpenAI tool_choice string → Anthropic tool_choice type (a named function is `tool` both ways).
TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "any"}
# Anthropic error `type` → the HTTP status it comes with (used for `error` events inside a 200 stream).
ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


@attrs.frozen
class AnthropicSettings:
    """The `[providers.anthropic]` table of a provider of kind "anthropic"."""

    default_max_tokens: int = attrs.field(default=DEFAULT_MAX_TOKENS, validator=attrs.validators.ge(1))


class UntranslatableRequest(ValueError):
    """The OpenAI request cannot be said in Anthropic's format (e.g. tool-call arguments that are not JSON)."""


# --- request -------------------------------------------------------------------------------------------


def native(call: Call) -> bool:
    """Whether the call is made in Anthropic's own format (the client spoke Messages)."""
    return call.native is not None and call.native_api == "messages"


def encode_request(call: Call, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> bytes:
    if native(call) and call.native is not None:  # the client spoke Messages: its body as sent, only the model mapped
        return _dumps({**call.native, "model": call.upstream_model})
    body = call.body
    system: list[Mapping[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        if message.get("role") in ("system", "developer"):
            system.append(message)
            continue
        role, blocks = _turn(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": PLACEHOLDER_USER_TEXT}]})
    max_tokens = requested_max_tokens(body)
    out: dict[str, Any] = {
        "model": call.upstream_model,
        "max_tokens": default_max_tokens if max_tokens is None else max_tokens,
    }
    if system:
        out["system"] = _system(system)
    out["messages"] = turns
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = stop
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    out.update(_tools(body))
    if call.stream:
        out["stream"] = True
    return _dumps(out)


def _dumps(out: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise UntranslatableRequest("its text is not valid Unicode (a lone surrogate)") from None


def _system(messages: list[Mapping[str, Any]]) -> str | list[dict[str, Any]]:
    """One string; text blocks instead when a part asks for prompt caching (`cache_control`)."""
    blocks = [block for m in messages for block in _blocks(m.get("content")) if block["type"] == "text"]
    if any("cache_control" in block for block in blocks):
        return blocks
    return "\n\n".join(text for text in map(message_text, messages) if text)


def _turn(message: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """One non-system OpenAI message as an Anthropic role and its content blocks."""
    role = message.get("role")
    if role == "tool":
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id", "")}
        content = _blocks(message.get("content"))
        if content:
            result["content"] = content
        return "user", [result]
    blocks = _blocks(message.get("content"))
    if role != "assistant":
        return "user", blocks
    for tool_call in map(_object, message.get("tool_calls") or ()):
        function = _object(tool_call.get("function"))
        arguments = function.get("arguments") or "{}"
        try:
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise UntranslatableRequest(f"the arguments of tool call {tool_call.get('id')!r} are not a JSON object")
        blocks.append({"type": "tool_use", "id": tool_call.get("id"), "name": function.get("name"), "input": arguments})
    return "assistant", blocks


def _object(value: Any) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else an empty one (fields of the wrong shape read as absent)."""
    return value if isinstance(value, Mapping) else {}


def _blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI message content (a string or a list of parts) as Anthropic text and image blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, Mapping):
            continue
        block: dict[str, Any] | None = None
        if part.get("type") == "text" and part.get("text"):
            block = {"type": "text", "text": part["text"]}
        elif part.get("type") == "image_url":
            block = _image(part.get("image_url"))
        if block is not None:
            if "cache_control" in part:
                block["cache_control"] = part["cache_control"]
            blocks.append(block)
    return blocks


def _image(image_url: Any) -> dict[str, Any] | None:
    url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
    if not isinstance(url, str):
        return None
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if encoding != "base64" or not data:
            return None
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    return None


def _tools(body: Mapping[str, Any]) -> dict[str, Any]:
    tools = []
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, Mapping) and tool.get("type") == "function" else None
        if not isinstance(function, Mapping):
            continue
        entry: dict[str, Any] = {"name": function.get("name")}
        if function.get("description"):
            entry["description"] = function["description"]
        entry["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
        tools.append(entry)
    if not tools:
        return {}
    choice = body.get("tool_choice")
    mapped: dict[str, Any] | None = None
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        mapped = {"type": TOOL_CHOICES[choice]}
    elif isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        mapped = {"type": "tool", "name": choice["function"].get("name")}
    if body.get("parallel_tool_calls") is False and (mapped is None or mapped["type"] != "none"):
        mapped = {**(mapped or {"type": "auto"}), "disable_parallel_tool_use": True}
    return {"tools": tools, "tool_choice": mapped} if mapped else {"tools": tools}


# --- response ------------------------------------------------------------------------------------------


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def normalise_usage(usage: Mapping[str, Any]) -> Usage:
    """Anthropic usage under OpenAI's rule: the prompt includes cache reads and cache writes. A count
    that is not a non-negative integer makes it `provider_invalid` (a sum would hide it; see
    `policies.usage`)."""
    keys = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    if any(usage.get(key) is not None and not (type(usage[key]) is int and usage[key] >= 0) for key in keys):
        return Usage(0, 0, 0, "provider_invalid", usage)
    split = usage.get("cache_creation")
    written_1h = split.get("ephemeral_1h_input_tokens") if isinstance(split, dict) else None
    if (split is not None and not isinstance(split, dict)) or (
        written_1h is not None and not (type(written_1h) is int and written_1h >= 0)
    ):
        return Usage(0, 0, 0, "provider_invalid", usage)

    def count(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    written = count("cache_creation_input_tokens")
    prompt = count("input_tokens") + count("cache_read_input_tokens") + written
    return Usage(
        prompt,
        count("output_tokens"),
        count("cache_read_input_tokens"),
        reported=usage,
        cache_write_tokens=written,
        cache_write_1h_tokens=written_1h or 0,
    )


def openai_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI `usage` object for an Anthropic usage, cache writes kept visible."""
    normal = normalise_usage(usage)
    body = normal.as_openai()
    cache_creation = usage.get("cache_creation_input_tokens")
    body["prompt_tokens_details"] = {
        "cached_tokens": normal.cached_tokens,
        "cache_creation_tokens": cache_creation if isinstance(cache_creation, int) else 0,
    }
    return body


def decode_response(provider: str, content: bytes, created: int | None = None) -> Completion:
    message = json_answer(
        provider,
        content,
        lambda m: m.get("type") == "message" and isinstance(m.get("content"), list),
        "an Anthropic message",
    )
    texts = []
    tool_calls = []
    for block in message["content"]:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            arguments = json.dumps(block.get("input") or {}, separators=(",", ":"), ensure_ascii=False)
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    raw_usage = message.get("usage")
    usage = raw_usage if isinstance(raw_usage, dict) else None
    body: dict[str, Any] = {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": message.get("model"),
        "choices": [
            {"index": 0, "message": reply, "logprobs": None, "finish_reason": finish_reason(message.get("stop_reason"))}
        ],
    }
    if usage is not None:
        body["usage"] = openai_usage(usage)
    return Completion(body, normalise_usage(usage) if usage is not None else None, message)


def event_error(provider: str, data: Mapping[str, Any], secrets: Iterable[str] = ()) -> ProviderError:
    """The `ProviderError` for an Anthropic error object (`{"type": "error", "error": {type, message}}`);
    its message redacted of `secrets`."""
    error = data.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    status = ERROR_STATUSES.get(kind, 500) if isinstance(kind, str) else 500
    return error_for_status(provider, status, message if isinstance(message, str) else "", secrets=secrets)


class AnthropicStreamDecoder:
    """Pure and stateful: Anthropic stream events in, OpenAI chunks out. `finished` after message_stop."""

    def __init__(self, provider: str, model: str, created: int, secrets: Iterable[str] = ()) -> None:
        self._provider = provider
        self._secrets = tuple(secrets)
        self._id = ""
        self._model = model
        self._created = created
        self._usage: dict[str, Any] | None = None
        self._stop_reason: Any = None
        self._tool_calls: dict[Any, int] = {}  # content block index → OpenAI tool call index
        self.finished = False

    def feed(self, event: SSEEvent) -> list[Chunk]:
        try:
            data = json.loads(event.data)
        except ValueError:
            raise MalformedResponse(
                self._provider, f"provider {self._provider!r} sent a stream event that is not JSON"
            ) from None
        if not isinstance(data, dict):
            raise MalformedResponse(
                self._provider, f"provider {self._provider!r} sent a stream event that is not an object"
            )
        kind = data.get("type", event.event)
        if kind == "message_start":
            message = _object(data.get("message"))
            self._id = message.get("id") or self._id
            self._model = message.get("model") or self._model
            self._merge_usage(message.get("usage"))
            opening = self._chunk({"role": "assistant", "content": "", "refusal": None})
            return [attrs.evolve(opening, reported=self._so_far())]
        if kind == "content_block_start":
            return self._block_start(data.get("index"), _object(data.get("content_block")))
        if kind == "content_block_delta":
            return self._block_delta(data.get("index"), _object(data.get("delta")))
        if kind == "message_delta":
            self._stop_reason = _object(data.get("delta")).get("stop_reason", self._stop_reason)
            self._merge_usage(data.get("usage"))
            return []
        if kind == "message_stop":
            self.finished = True
            chunks = [self._chunk({}, finish_reason(self._stop_reason))]
            if self._usage is not None:
                chunks.append(self._usage_chunk(self._usage))
            return chunks
        if kind == "error":
            raise event_error(self._provider, data, self._secrets)
        return []  # ping, content_block_stop, and event types added after this adapter was written

    def _block_start(self, index: Any, block: Mapping[str, Any]) -> list[Chunk]:
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block.get("type") == "tool_use":
            position = self._tool_calls[index] = len(self._tool_calls)
            call = {"index": position, "id": block.get("id"), "type": "function"}
            call["function"] = {"name": block.get("name"), "arguments": ""}
            return [self._chunk({"tool_calls": [call]})]
        return []

    def _block_delta(self, index: Any, delta: Mapping[str, Any]) -> list[Chunk]:
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if delta.get("type") == "input_json_delta" and delta.get("partial_json") and index in self._tool_calls:
            call = {"index": self._tool_calls[index], "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        return []  # thinking, signature and citations deltas have no OpenAI chunk

    def _so_far(self) -> Usage | None:
        """The usage reported so far: `message_start`'s input, and the output of the last `message_delta`
        (put on the chunks of a `native` stream only: a chat stream has no chunk for a message_delta)."""
        return normalise_usage(self._usage) if self._usage is not None else None

    def _merge_usage(self, usage: Any) -> None:
        """Usage counts are cumulative: a later event's value replaces an earlier one."""
        if isinstance(usage, dict):
            fresh = {key: value for key, value in usage.items() if value is not None}
            self._usage = {**(self._usage or {}), **fresh}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> Chunk:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        content = delta.get("content")
        return Chunk(self._head([choice]), None, None, len(content.encode()) if content else 0)

    def _usage_chunk(self, usage: Mapping[str, Any]) -> Chunk:
        return Chunk({**self._head([]), "usage": openai_usage(usage)}, None, normalise_usage(usage))

    def _head(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }


class NativeStreamDecoder(AnthropicStreamDecoder):
    """For a `native` call (the client speaks Messages too): every event kept as it came, on the
    first chunk it produced (an empty one when it produced none), so it can be relayed unchanged
    — thinking, citations and event types this adapter does not know included."""

    def feed(self, event: SSEEvent) -> list[Chunk]:
        chunks = super().feed(event)
        raw = f"event: {event.event}\ndata: {event.data}\n\n"
        if not chunks:  # a message_delta's output usage rides on its own event
            reported = self._so_far() if event.event == "message_delta" else None
            return [Chunk({}, native=raw, reported=reported)]
        return [attrs.evolve(chunks[0], native=raw), *chunks[1:]]


# --- the caller ----------------------------------------------------------------------------------------


class AnthropicUpstream:
    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        timeouts: Timeouts,
        max_connections: int,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self._default_max_tokens = default_max_tokens
        default_headers = {"content-type": "application/json", "anthropic-version": API_VERSION, **(headers or {})}
        if api_key:
            default_headers["x-api-key"] = api_key
        self.secrets = secrets_of(api_key, headers)
        url = base_url.rstrip("/") + "/messages"
        self._endpoint = Endpoint(name, url, default_headers, self.secrets, timeouts, max_connections, transport)

    def _encode(self, call: Call) -> bytes:
        try:
            return encode_request(call, self._default_max_tokens)
        except UntranslatableRequest as error:
            raise UpstreamRejected(
                self.name, f"provider {self.name!r} cannot take this request: {error}", status=400
            ) from None

    async def complete(self, call: Call) -> Completion:
        return decode_response(self.name, await self._endpoint.post(self._encode(call), call.headers))

    async def count_tokens(self, body: Mapping[str, Any], model: str, headers: Mapping[str, str]) -> dict[str, Any]:
        """The provider's `POST /messages/count_tokens` for a Messages body (its model mapped)."""
        content = _dumps(
            {key: value for key, value in body.items() if key not in ("max_tokens", "stream")} | {"model": model}
        )
        answer = await self._endpoint.post(content, headers, "/count_tokens")
        try:
            counted = json.loads(answer)
        except ValueError:
            counted = None
        if not isinstance(counted, dict) or not isinstance(counted.get("input_tokens"), int):
            raise MalformedResponse(self.name, f"provider {self.name!r} sent a token count that is not one")
        return counted

    async def open_stream(self, call: Call) -> SSEChunkStream:
        content = self._encode(call)
        kind = NativeStreamDecoder if native(call) else AnthropicStreamDecoder
        decoder = kind(self.name, call.upstream_model, int(time.time()), self.secrets)
        return await self._endpoint.open_sse(content, call.headers, decoder, "message_stop")

    async def aclose(self) -> None:
        await self._endpoint.aclose()
