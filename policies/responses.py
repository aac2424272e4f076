"""OpenAI's Responses API ⇄ chat completions: pure translations, no I/O.

- `chat_request(body, history)`: a Responses request (`input` as a string or items, `instructions`,
  function `tools`, `tool_choice`, `max_output_tokens`, `text.format`) and the chat messages of the
  turns before it (from `previous_response_id`) → a chat completion body, and the messages of this
  turn's input (what a continuation replays; `instructions` are not carried over, as OpenAI).
- `items_to_messages` / `messages_to_items`: input items ⇄ chat messages (inverse on what they produce).
- `response_object(...)`: a chat completion → the Responses `response` object (`message` items with
  `output_text`, `function_call` items, usage as `input_tokens`/`output_tokens` with details).
- `ResponseEvents`: chat stream chunks → Responses' named SSE events with `sequence_number`.
- `native_body(body, history)`: what a pass-through provider (`responses = true`) is sent: the
  client's body, unknown fields kept, with `store: false` and the turns `previous_response_id` names
  expanded into `input` items (the gateway, not the provider, keeps the conversation).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from policies.errors import InvalidRequest

TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _content(content: Any, param: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad("Message content must be a string or a list of content parts.", param)
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise _bad(f"Unsupported content part type {kind!r}.", where)
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)  # plain text: every provider takes a string
    return parts


def items_to_messages(items: Any, param: str = "input") -> list[dict[str, Any]]:
    """Input items (or a string) → chat messages; consecutive `function_call`s share one assistant turn."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise _bad("'input' must be a string or a list of input items.", param)
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"{param}[{index}]"
        if not isinstance(item, dict):
            raise _bad("Each input item must be an object.", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(f"Unsupported message role {role!r}.", f"{where}.role")
            messages.append({"role": role, "content": _content(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
            if not (isinstance(call_id, str) and isinstance(name, str) and isinstance(arguments, str)):
                raise _bad("A function_call item needs string call_id, name and arguments.", where)
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not (isinstance(call_id, str) and isinstance(output, str)):
                raise _bad("A function_call_output item needs string call_id and output.", where)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            continue  # a reasoning summary from an earlier turn: nothing a chat model takes back
        else:
            raise _bad(f"Unsupported input item type {kind!r}.", f"{where}.type")
    return messages


def messages_to_items(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages → input items: the inverse of `items_to_messages` on what it produces."""
    items: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "tool":
            items.append(
                {"type": "function_call_output", "call_id": message["tool_call_id"], "output": message["content"]}
            )
        elif message.get("tool_calls"):
            if message.get("content"):  # an assistant turn that said something before its calls
                items.append({"type": "message", "role": "assistant", "content": message["content"]})
            for call in message["tool_calls"]:
                function = call["function"]
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call["id"],
                        "name": function["name"],
                        "arguments": function["arguments"],
                    }
                )
        else:
            content = message["content"]
            if content is None:
                continue  # an assistant turn that said nothing
            if isinstance(content, list):
                part_type = "output_text" if message["role"] == "assistant" else "input_text"
                content = [
                    {"type": part_type, "text": part["text"]}
                    if part["type"] == "text"
                    else {"type": "input_image", "image_url": part["image_url"]["url"]}
                    for part in content
                ]
            items.append({"type": "message", "role": message["role"], "content": content})
    return items


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("'tools' must be a list.", "tools")
    out = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _bad(f"Only function tools are supported here (got {kind!r}).", f"tools[{index}]")
        function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if key in tool}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad("Unsupported 'tool_choice'.", "tool_choice")


def chat_request(body: Mapping[str, Any], history: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A Responses request and the turns before it → (chat body, this turn's input messages)."""
    if "input" not in body:
        raise _bad("Missing required parameter: 'input'.", "input")
    turn = items_to_messages(body["input"])
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad("'instructions' must be a string.", "instructions")
    system = [{"role": "system", "content": instructions}] if instructions else []
    chat: dict[str, Any] = {"model": body.get("model"), "messages": [*system, *history, *turn]}
    if "max_output_tokens" in body and body["max_output_tokens"] is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p", "user", "parallel_tool_calls"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
        if body.get("tool_choice") is not None:
            chat["tool_choice"] = _tool_choice(body["tool_choice"])
    else:
        chat.pop("parallel_tool_calls", None)
    text_format = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        schema = {key: text_format[key] for key in ("name", "schema", "strict", "description") if key in text_format}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(text_format, dict) and text_format.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat, turn


def translatable(body: Mapping[str, Any]) -> dict[str, Any]:
    """`body` with only what chat can say, for a request every candidate provider is passed through
    (whose admission still needs a chat reading): tools other than functions, a tool choice naming
    one, content parts and input items chat has no equivalent of are left out of the reading — the
    provider is sent them all, and the reservation counts the whole body."""
    out = dict(body)
    tools = body.get("tools")
    if isinstance(tools, list):
        out["tools"] = [t for t in tools if isinstance(t, dict) and t.get("type") == "function" and "name" in t]
        choice = body.get("tool_choice")
        if (
            choice is not None
            and not isinstance(choice, str)
            and not (isinstance(choice, dict) and choice.get("type") == "function")
        ):
            out.pop("tool_choice")
    items = body.get("input")
    if isinstance(items, list):
        kept = []
        for item in items:
            if not isinstance(item, dict) or item.get("type", "message") not in ITEM_TYPES:
                continue
            content = item.get("content")
            if item.get("type", "message") == "message" and isinstance(content, list):
                parts = [p for p in content if isinstance(p, dict) and _translatable_part(p)]
                if not parts:
                    continue
                item = {**item, "content": parts}
            kept.append(item)
        out["input"] = kept
    return out


ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


def unbounded_inputs(body: Mapping[str, Any]) -> str | None:
    """What of a passed-through body the provider bills that its bytes do not bound: built-in tools
    (their fees and the tokens of what they fetch) and files or images given by id or as a file (their
    tokens are not in the body). None when every billed input is in the body as text or an image URL."""
    found = []
    tools = body.get("tools")
    if isinstance(tools, list) and any(not (isinstance(t, dict) and t.get("type") == "function") for t in tools):
        found.append("built-in tools")
    items = body.get("input")
    for item in items if isinstance(items, list) else ():
        content = item.get("content") if isinstance(item, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and (part.get("type") == "input_file" or "file_id" in part):
                found.append("files by id or as input_file")
                break
        else:
            continue
        break
    return " and ".join(found) or None


def _translatable_part(part: Mapping[str, Any]) -> bool:
    if part.get("type") in TEXT_PARTS:
        return isinstance(part.get("text"), str)
    return part.get("type") == "input_image" and isinstance(part.get("image_url"), str)


def input_items(value: Any) -> list[Any]:
    """`input` as a list of items (a string is one user message)."""
    return [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else list(value)


def native_body(body: Mapping[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The Responses body a pass-through provider is sent: the client's, every field kept, except
    `store` (false: the provider keeps nothing; the gateway stores the turn) and `previous_response_id`
    (dropped; the earlier turns, `history`, lead the `input` as items)."""
    native = {key: value for key, value in body.items() if key != "previous_response_id"}
    native["store"] = False
    if history:
        native["input"] = [*messages_to_items(history), *input_items(body["input"])]
    return native


def usage_object(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage → Responses usage."""
    if usage is None:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def message_item(text: str, item_id: str | None = None, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id or new_id("msg"),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def call_item(call: Mapping[str, Any], item_id: str | None = None) -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "id": item_id or new_id("fc"),
        "type": "function_call",
        "call_id": call.get("id") or new_id("call"),
        "name": function.get("name", ""),
        "arguments": function.get("arguments") or "",
        "status": "completed",
    }


def output_items(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if message.get("content"):
        items.append(message_item(message["content"]))
    items.extend(call_item(call) for call in message.get("tool_calls") or ())
    return items


def assistant_message(items: list[Any]) -> dict[str, Any]:
    """The output items as the assistant chat message a continuation replays (its text and function
    calls; reasoning and built-in tool items are not replayed)."""
    items = [item for item in items if isinstance(item, dict)]
    text = "".join(
        part["text"]
        for item in items
        if item.get("type") == "message"
        for part in item.get("content") or ()
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )
    calls = [
        {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
        for item in items
        if item.get("type") == "function_call"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def response_object(
    response_id: str,
    created_at: int,
    request: Mapping[str, Any],
    model: str,
    output: list[dict[str, Any]],
    usage: Mapping[str, Any] | None,
    *,
    status: str = "completed",
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """The Responses `response` object (`status`: in_progress, completed, incomplete or failed)."""
    incomplete = None
    if status == "completed" and finish_reason == "length":
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "store": request.get("store", True),
        "temperature": request.get("temperature"),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "metadata": request.get("metadata") or {},
        "usage": usage_object(usage),
    }


def sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class ResponseEvents:
    """Chat stream chunks in, Responses' named SSE events out, each with its `sequence_number`.

    Text becomes one `message` item (added on its first delta); tool calls become `function_call`
    items, their arguments streamed as `response.function_call_arguments.delta`. `finish` closes
    every open item and ends with `response.completed` (or `incomplete`), carrying usage; `fail`
    ends with `response.failed`."""

    def __init__(self, response_id: str, created_at: int, request: Mapping[str, Any], model: str) -> None:
        self.response_id = response_id
        self.created_at = created_at
        self.request = request
        self.model = model
        self.sequence = 0
        self.items: list[dict[str, Any]] = []  # in output order
        self._text: dict[str, Any] | None = None  # the open message item
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index → its function_call item
        self.finish_reason: str | None = None

    def _event(self, kind: str, **data: Any) -> bytes:
        event = sse(kind, {"type": kind, "sequence_number": self.sequence, **data})
        self.sequence += 1
        return event

    def snapshot(self, status: str, usage: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return response_object(
            self.response_id,
            self.created_at,
            self.request,
            self.model,
            self.items,
            usage,
            status=status,
            finish_reason=self.finish_reason,
        )

    def start(self) -> bytes:
        opening = self.snapshot("in_progress")
        return self._event("response.created", response=opening) + self._event("response.in_progress", response=opening)

    def chunk(self, data: Mapping[str, Any]) -> bytes:
        out = []
        for choice in data.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if text := delta.get("content"):
                out.append(self._text_delta(text))
            for call in delta.get("tool_calls") or ():
                out.append(self._call_delta(call))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return b"".join(out)

    def _text_delta(self, text: str) -> bytes:
        out = b""
        item = self._text
        if item is None:
            item = self._text = message_item("", status="in_progress")
            self.items.append(item)
            index = len(self.items) - 1
            added = {**item, "content": []}
            out += self._event("response.output_item.added", output_index=index, item=added)
            part = {"type": "output_text", "text": "", "annotations": []}
            out += self._event(
                "response.content_part.added", item_id=item["id"], output_index=index, content_index=0, part=part
            )
        item["content"][0]["text"] += text
        return out + self._event(
            "response.output_text.delta",
            item_id=item["id"],
            output_index=self.items.index(item),
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _call_delta(self, call: Mapping[str, Any]) -> bytes:
        out = b""
        index = call.get("index", 0)
        function = call.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            item = self._calls[index] = call_item({"id": call.get("id"), "function": {"name": function.get("name")}})
            item["status"] = "in_progress"
            self.items.append(item)
            out += self._event("response.output_item.added", output_index=len(self.items) - 1, item=dict(item))
        if arguments := function.get("arguments"):
            item["arguments"] += arguments
            out += self._event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=self.items.index(item),
                delta=arguments,
            )
        return out

    def finish(self, usage: Mapping[str, Any] | None, x_gateway: Any = None) -> tuple[bytes, dict[str, Any]]:
        """The closing events, and the final response object (without `x_gateway`, as stored)."""
        out = []
        for index, item in enumerate(self.items):
            if item["type"] == "message":
                part = item["content"][0]
                common = {"item_id": item["id"], "output_index": index, "content_index": 0}
                out.append(self._event("response.output_text.done", **common, text=part["text"], logprobs=[]))
                out.append(self._event("response.content_part.done", **common, part=part))
            else:
                out.append(
                    self._event(
                        "response.function_call_arguments.done",
                        item_id=item["id"],
                        output_index=index,
                        arguments=item["arguments"],
                        name=item["name"],
                    )
                )
            item["status"] = "completed"
            out.append(self._event("response.output_item.done", output_index=index, item=item))
        final = self.snapshot("completed", usage)
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, response={**final, "x_gateway": x_gateway}))
        return b"".join(out), final

    def fail(self, error: Mapping[str, Any]) -> bytes:
        failed = self.snapshot("failed")
        failed["error"] = {"code": "server_error", "message": str(error.get("message", ""))}
        return self._event("response.failed", response=failed)
