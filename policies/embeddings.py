"""Read an OpenAI embeddings body (`POST /v1/embeddings`) for the gateway: pure checks, no I/O.

    input            a string, an array of strings, an array of token ids, or an array of such arrays
                     (1..`MAX_INPUTS` inputs; no empty string, no empty array)
    model            required, a non-empty string
    encoding_format  "float" (the default) or "base64"
    dimensions       an integer ≥ 1 (what the provider accepts is the provider's business)
    user             a string

The body is forwarded as the client sent it. The request generates nothing, so it reserves no
output (`max_tokens` 0); its input bound is one token per UTF-8 byte of each text and one per token
id, plus the per-input allowance of `policies.budget` (no tokenizer makes more than one token of a
byte), so a hard budget is never overspent whatever the provider reports. Errors are `InvalidRequest`
in OpenAI's shape, naming the field in `param`.
"""

from __future__ import annotations

from typing import Any

from policies.errors import InvalidRequest
from policies.validation import ChatRequest, _expect, _type_name, body_model

MAX_INPUTS = 2048  # OpenAI's own limit per request
MAX_DIMENSIONS = 65_536
ENCODINGS = ("float", "base64")


def _token_ids(value: list[Any], param: str) -> int:
    """Check an array of token ids; its length."""
    if not value:
        raise InvalidRequest(f"'{param}' must not be an empty array.", param=param, code="invalid_value")
    for index, token in enumerate(value):
        if not isinstance(token, int) or isinstance(token, bool) or token < 0:
            raise InvalidRequest(
                f"'{param}[{index}]' must be a non-negative integer (a token id), not {_type_name(token)}.",
                param=f"{param}[{index}]",
                code="invalid_type",
            )
    return len(value)


def _text(value: str, param: str) -> int:
    if not value:
        raise InvalidRequest(f"'{param}' must not be an empty string.", param=param, code="invalid_value")
    return len(value.encode("utf-8", "surrogatepass"))


def input_bound(value: Any) -> tuple[int, int]:
    """Check `input`; (its number of inputs, an upper bound of its tokens before allowances)."""
    param = "input"
    if isinstance(value, str):
        return 1, _text(value, param)
    if not isinstance(value, list):
        raise InvalidRequest(
            f"'{param}' must be a string, an array of strings, an array of token ids or an array of arrays "
            f"of token ids, not {_type_name(value)}.",
            param=param,
            code="invalid_type",
        )
    if not value:
        raise InvalidRequest(f"'{param}' must not be an empty array.", param=param, code="invalid_value")
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return 1, _token_ids(value, param)
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(
            f"'{param}' must hold at most {MAX_INPUTS} inputs, not {len(value)}.", param=param, code="invalid_value"
        )
    tokens = 0
    for index, item in enumerate(value):
        where = f"{param}[{index}]"
        if isinstance(item, str):
            tokens += _text(item, where)
        elif isinstance(item, list):
            tokens += _token_ids(item, where)
        else:
            raise InvalidRequest(
                f"'{where}' must be a string or an array of token ids, not {_type_name(item)}.",
                param=where,
                code="invalid_type",
            )
    return len(value), tokens


def parse_embeddings_request(body: Any) -> ChatRequest:
    """Check a decoded embeddings body. Raises `InvalidRequest` naming the field at fault."""
    model = body_model(body)
    if "input" not in body:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    inputs, bound = input_bound(body["input"])
    encoding = body.get("encoding_format")
    if encoding is not None:
        _expect(encoding, str, "encoding_format", "a string")
        if encoding not in ENCODINGS:
            raise InvalidRequest(
                f"'encoding_format' must be one of {', '.join(ENCODINGS)}, not {encoding!r}.",
                param="encoding_format",
                code="invalid_value",
            )
    dimensions = body.get("dimensions")
    if dimensions is not None:
        _expect(dimensions, int, "dimensions", "an integer")
        if not 1 <= dimensions <= MAX_DIMENSIONS:
            raise InvalidRequest(
                f"'dimensions' must be between 1 and {MAX_DIMENSIONS}, not {dimensions}.",
                param="dimensions",
                code="invalid_value",
            )
    user = body.get("user")
    if user is not None:
        _expect(user, str, "user", "a string")
    return ChatRequest(
        body,
        model,
        stream=False,
        include_usage=False,
        max_tokens=0,
        prompt_bytes=bound,
        message_count=inputs,
        inputs=inputs,
    )
