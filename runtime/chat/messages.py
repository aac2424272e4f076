"""Anthropic's Messages API as a client face: Messages ⇄ chat, the inverse of `providers.anthropic`.

A client calling `POST /v1/messages` is served by any provider. Its body is read into a chat request
(`to_chat`) for admission, routing and providers of other kinds; an `anthropic`-kind provider is sent
the body as the client wrote it (`Call.native`). The mapping tables live in `providers.anthropic`,
one per mapping, read both ways:

    system (string or text blocks)     → a leading system message (blocks kept as text parts, with cache_control)
    system turns inside messages       → system messages where they stand
    user text / image blocks           → content parts (base64 source → data: URL, url source → the URL)
    user tool_result blocks            → tool messages (their text), before the user's other content
    assistant text / tool_use          → content and tool_calls (input as JSON text)
    thinking, documents, others        → not sent to chat providers (still counted for the reservation)
    max_tokens, temperature, top_p, top_k as is;  stop_sequences → stop;  metadata.user_id → user
    tools [{name, description, input_schema}] → function tools;  tool_choice via TOOL_CHOICES;
    disable_parallel_tool_use → parallel_tool_calls: false

Answers: a `chat.completion` → a `message` (`to_message`), finish_reason → stop_reason (STOP_REASONS);
usage back to Anthropic's rule (`anthropic_usage`, the inverse of `anthropic.openai_usage`).
Streams: `runtime.chat.messages_stream`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from policies.errors import InvalidRequest
from policies.validation import ChatRequest, body_bytes, parse_chat_request
from providers.anthropic import STOP_REASONS, TOOL_CHOICES

ROLES = ("user", "assistant", "system")  # "system" turns inside `messages`: Claude Code sends them
IMAGE_SOURCES = ("base64", "url")


def _invalid(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_request")


def _text(content: Any) -> str:
    """The text of a string or a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b["text"] for b in content if isinstance(b, Mapping) and isinstance(b.get("text"), str))
    return ""


def _part(block: Mapping[str, Any]) -> dict[str, Any] | None:
    """A user text or image block as an OpenAI content part (None for blocks chat cannot carry)."""
    part: dict[str, Any] | None = None
    if block.get("type") == "text" and isinstance(block.get("text"), str):
        part = {"type": "text", "text": block["text"]}
    elif block.get("type") == "image" and isinstance(source := block.get("source"), Mapping):
        if source.get("type") == "base64":
            part = {
                "type": "image_url",
                "image_url": {"url": f"data:{source.get('media_type')};base64,{source.get('data')}"},
            }
        elif source.get("type") == "url":
            part = {"type": "image_url", "image_url": {"url": source.get("url")}}
    if part is not None and "cache_control" in block:
        part["cache_control"] = block["cache_control"]
    return part


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A single uncached text part as a plain string, as chat clients write it."""
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        text: str = parts[0]["text"]
        return text
    return parts


def _messages(turn: Mapping[str, Any], param: str) -> list[dict[str, Any]]:
    role = turn.get("role")
    content = turn.get("content")
    if role not in ROLES:
        raise _invalid(f"{param}.role: must be 'user', 'assistant' or 'system', not {role!r}.", f"{param}.role")
    if role == "system":  # a mid-conversation system turn: a system message where it stands
        blocks = content if isinstance(content, list) else []
        said = [part for block in blocks if isinstance(block, Mapping) and (part := _part(block)) is not None]
        text = content if isinstance(content, str) else _content(said)
        return [{"role": "system", "content": text}] if text else []
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _invalid(f"{param}.content: must be a string or an array of content blocks.", f"{param}.content")
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
            raise _invalid(f"{param}.content.{index}: must be a content block object with a type.", param)
        if block["type"] == "tool_result":
            out.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": _text(block.get("content"))}
            )
        elif block["type"] == "tool_use" and role == "assistant":
            arguments = json.dumps(block.get("input") or {}, separators=(",", ":"), ensure_ascii=False)
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        elif (part := _part(block)) is not None:
            parts.append(part)
    if role == "assistant":
        text = "".join(part.get("text", "") for part in parts)
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        if text or tool_calls:
            out.append(message)
    elif parts:
        out.append({"role": "user", "content": _content(parts)})
    return out


def to_chat(body: Any) -> dict[str, Any]:
    """A Messages request body as a chat-completions body. Raises `InvalidRequest` naming the field."""
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            raise _invalid(f"{key}: Field required", key)
    if not isinstance(body["max_tokens"], int) or isinstance(body["max_tokens"], bool):
        raise _invalid("max_tokens: Input should be a valid integer", "max_tokens")
    if not isinstance(body["messages"], list):
        raise _invalid("messages: Input should be a valid list", "messages")
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list):
        parts = [part for block in system if isinstance(block, Mapping) and (part := _part(block)) is not None]
        if parts:
            messages.append({"role": "system", "content": _content(parts)})
    elif system is not None and system != "":
        raise _invalid("system: must be a string or an array of text blocks.", "system")
    for index, turn in enumerate(body["messages"]):
        if not isinstance(turn, Mapping):
            raise _invalid(f"messages.{index}: must be an object.", f"messages.{index}")
        messages.extend(_messages(turn, f"messages.{index}"))
    chat: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if isinstance(body.get("stop_sequences"), list) and body["stop_sequences"]:
        chat["stop"] = body["stop_sequences"]
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    chat.update(_tools(body))
    if body.get("stream") is not None:
        chat["stream"] = body["stream"]
        if body["stream"] is True:
            chat["stream_options"] = {"include_usage": True}  # the closing message_delta needs it
    return chat


def _tools(body: Mapping[str, Any]) -> dict[str, Any]:
    tools = []
    for tool in body.get("tools") or ():
        if not isinstance(tool, Mapping) or "input_schema" not in tool:
            continue  # server tools (web search, ...) have no chat equivalent
        function: dict[str, Any] = {"name": tool.get("name")}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool["input_schema"]
        tools.append({"type": "function", "function": function})
    if not tools:
        return {}
    out: dict[str, Any] = {"tools": tools}
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping):
        by_type = {value: key for key, value in TOOL_CHOICES.items()}
        if choice.get("type") == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif choice.get("type") in by_type:
            out["tool_choice"] = by_type[choice["type"]]
        if choice.get("disable_parallel_tool_use") is True:
            out["parallel_tool_calls"] = False
    return out


def parse_messages_request(body: Any) -> ChatRequest:
    """A Messages body as the `ChatRequest` the use case admits: its chat translation, with the body
    itself kept as `native`, and the larger of the two sizes reserved for (every field an Anthropic
    provider bills — thinking, documents, server tools — is in the native body)."""
    chat = parse_chat_request(to_chat(body))
    return ChatRequest(
        chat.body,
        chat.model,
        chat.stream,
        True,
        chat.max_tokens,
        max(chat.prompt_bytes, body_bytes(body)),
        chat.message_count,
        chat.image_parts,
        1,
        chat.tool_count,
        native=body,
        native_api="messages",
    )


# --- answers -------------------------------------------------------------------------------------------


def anthropic_usage(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """An OpenAI usage object under Anthropic's rule, where `input_tokens` excludes cache reads and
    writes (the inverse of `providers.anthropic.openai_usage`)."""
    usage = usage or {}
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, Mapping) else {}

    def count(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    cached = count(details.get("cached_tokens"))
    written = count(details.get("cache_creation_tokens"))
    return {
        "input_tokens": max(count(usage.get("prompt_tokens")) - cached - written, 0),
        "output_tokens": count(usage.get("completion_tokens")),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": written,
    }


def stop_reason(finish_reason: Any) -> str:
    return STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def message_id(chat_id: Any) -> str:
    return chat_id if isinstance(chat_id, str) and chat_id.startswith("msg_") else f"msg_{secrets.token_hex(12)}"


def to_message(completion: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A `chat.completion` as an Anthropic `message` (`model`: the model that answered)."""
    choices = completion.get("choices") or [{}]
    choice: Mapping[str, Any] = choices[0] if isinstance(choices[0], Mapping) else {}
    found = choice.get("message")
    reply: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    content: list[dict[str, Any]] = []
    if isinstance(reply.get("content"), str) and reply["content"]:
        content.append({"type": "text", "text": reply["content"]})
    for call in reply.get("tool_calls") or ():
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments})
    return {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": anthropic_usage(completion.get("usage")),
    }
