"""Validate only the fields the gateway reads (DESIGN §3); everything else is forwarded untouched.

`prompt_bytes` is the UTF-8 size of the whole body as compact JSON: every field a provider turns
into input tokens (messages and their names, system/developer content, tools, functions,
tool_choice, response_format schemas, ...) is text inside it, and no tokenizer makes more than one
token of a byte, so it bounds all of them at once, including fields added later. Image parts cost
tokens their bytes do not show; they are counted apart (`image_parts`, priced by
`policies.budget.IMAGE_PART_TOKENS`). `n` (choices per request) is an integer in 1..`MAX_N`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from policies.errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})
MAX_N = 128
MAX_OUTPUT_TOKENS = 10_000_000  # per choice; no provider generates more, and the worst case stays a sane number


@attrs.frozen
class ChatRequest:
    """What the gateway needs to know about a chat request; `body` is the client's JSON as sent."""

    body: Mapping[str, Any]
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    prompt_bytes: int
    message_count: int
    image_parts: int = 0
    n: int = 1
    tool_count: int = 0
    # The body as the client sent it when it spoke another API than chat (Anthropic Messages, OpenAI
    # Responses — `native_api`: "messages", "responses"): what a provider of that format is sent.
    # `body` is then its translation to chat.
    native: Mapping[str, Any] | None = None
    native_api: str | None = None
    # An embeddings request (`policies.embeddings`): how many inputs `body["input"]` holds. None: chat.
    # Such a request generates nothing: `max_tokens` is 0, so admission reserves no output.
    inputs: int | None = None
    # What the provider may bill that the reservation cannot bound (a passed-through Responses body's
    # files by id, built-in tools), named for the refusal under a hard budget. None: every input counted.
    unbounded: str | None = None

    def capped(self, cap: int) -> ChatRequest:
        """This request with its output bounded at `cap` tokens (a hard budget's), in both bodies."""
        native = (
            None if self.native is None else {**self.native, NATIVE_CAPS.get(self.native_api or "", "max_tokens"): cap}
        )
        return attrs.evolve(self, body={**self.body, "max_tokens": cap}, max_tokens=cap, native=native)


NATIVE_CAPS = {"messages": "max_tokens", "responses": "max_output_tokens"}  # each API's output bound


MAX_JSON_DEPTH = 128
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _too_deep(raw: bytes, limit: int) -> bool:
    """True when arrays/objects nest deeper than `limit` (brackets inside strings do not count).

    A loop over the brackets, not a recursion, so a 50 000-deep body costs a scan, never the stack.
    Most bodies have fewer brackets than the limit and skip the scan altogether."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for byte in _STRING.sub(b"", raw).translate(None, _NOT_BRACKET):
        if byte in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json(raw: bytes | str) -> Any:
    """The one door every JSON body goes through (chat and admin routes alike).

    Refuses, as `InvalidRequest` (400), what would otherwise fail later as a 500: a body that is not
    UTF-8, nesting deeper than `MAX_JSON_DEPTH` (checked before `json.loads`, which would recurse),
    `NaN`/`Infinity`, numbers Python will not convert, and lone UTF-16 surrogates (`"\\ud800"`),
    which cannot be encoded again to forward or record the request. A valid surrogate pair (an
    escaped emoji) is fine."""
    if isinstance(raw, str):
        try:
            raw = raw.encode()
        except UnicodeEncodeError:
            raise InvalidRequest("The request body is not valid UTF-8.", code="invalid_json") from None
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise InvalidRequest("The request body is not valid UTF-8.", code="invalid_json") from None
    if _too_deep(raw, MAX_JSON_DEPTH):
        raise InvalidRequest(
            f"The request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json"
        )
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as error:
        raise InvalidRequest(f"The request body is not valid JSON: {error}.", code="invalid_json") from None
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise InvalidRequest(
                'The request body contains a lone UTF-16 surrogate (such as "\\ud800"); strings must be valid Unicode.',
                code="invalid_json",
            ) from None
    return value


def _finite_float(text: str) -> float:
    """`1e400` is valid JSON but no number: refused like `Infinity` (it would be one once parsed)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _type_name(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _expect(value: object, kind: type, param: str, wanted: str) -> None:
    """Raise unless `value` is a `kind` (a bool is not accepted where a number is wanted)."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidRequest(f"'{param}' must be {wanted}, not {_type_name(value)}.", param=param, code="invalid_type")


def _image_parts(content: object, param: str) -> int:
    """Check a message's content; the number of image parts it holds."""
    if content is None or isinstance(content, str):
        return 0
    if isinstance(content, list):
        images = 0
        for index, part in enumerate(content):
            _expect(part, dict, f"{param}[{index}]", "an object (a content part)")
            images += part.get("type") in IMAGE_PARTS
        return images
    raise InvalidRequest(
        f"'{param}' must be a string or an array of content parts, not {_type_name(content)}.",
        param=param,
        code="invalid_type",
    )


def body_bytes(body: Mapping[str, Any]) -> int:
    """The UTF-8 size of `body` as compact JSON (a lone surrogate counts its 3 bytes; rejecting it is
    not this function's business)."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode("utf-8", "surrogatepass"))


def _positive_int(body: Mapping[str, Any], key: str, maximum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    _expect(value, int, key, "an integer")
    if value < 1:
        raise InvalidRequest(f"'{key}' must be at least 1, not {value}.", param=key, code="invalid_value")
    if value > maximum:
        raise InvalidRequest(f"'{key}' must be at most {maximum}, not {value}.", param=key, code="invalid_value")
    return int(value)


def body_model(body: Any) -> str:
    """The `model` of a decoded request body, checked with the body's shape (a JSON object)."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {_type_name(body)}.", code="invalid_type")
    if "model" not in body:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    model = body["model"]
    _expect(model, str, "model", "a string")
    if not model:
        raise InvalidRequest("'model' must not be empty.", param="model", code="invalid_value")
    return str(model)


def parse_chat_request(body: Any) -> ChatRequest:
    """Check a decoded chat-completions body. Raises `InvalidRequest` naming the field at fault."""
    model = body_model(body)
    if "messages" not in body:
        raise InvalidRequest(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    messages = body["messages"]
    _expect(messages, list, "messages", "an array")
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages", code="invalid_value")
    image_parts = 0
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        _expect(message, dict, param, "an object")
        if "role" not in message:
            raise InvalidRequest(
                f"Missing required parameter: '{param}.role'.", param=f"{param}.role", code="missing_required_parameter"
            )
        role = message["role"]
        _expect(role, str, f"{param}.role", "a string")
        if role not in ROLES:
            raise InvalidRequest(
                f"'{param}.role' must be one of {', '.join(sorted(ROLES))}, not {role!r}.",
                param=f"{param}.role",
                code="invalid_value",
            )
        image_parts += _image_parts(message.get("content"), f"{param}.content")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    _expect(stream, bool, "stream", "a boolean")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        _expect(options, dict, "stream_options", "an object")
        flag = options.get("include_usage", False)
        _expect(flag, bool, "stream_options.include_usage", "a boolean")
        include_usage = bool(flag)
    max_tokens = _positive_int(body, "max_completion_tokens", MAX_OUTPUT_TOKENS) or _positive_int(
        body, "max_tokens", MAX_OUTPUT_TOKENS
    )
    n = _positive_int(body, "n", MAX_N) or 1
    tools = [body.get(key) for key in ("tools", "functions")]
    tool_count = sum(len(value) for value in tools if isinstance(value, list))
    return ChatRequest(
        body, model, stream, include_usage, max_tokens, body_bytes(body), len(messages), image_parts, n, tool_count
    )
