"""Single requests with a real HTTP client (httpx): a pre-flight check and the overhead pass.

The pre-flight check makes sure a target answers a valid chat.completion and a valid stream before any
load is thrown at it (a gateway that answers 401 to everything would otherwise look very fast).
The overhead pass collects the gateway's own account of its overhead, per response.
"""

from __future__ import annotations

import json

import httpx

from bench.stats import summary
from bench.target import Target

MODEL = "bench-model"


def chat_body(content: str = "Say hello to the benchmark, please, in a few words.") -> bytes:
    """The non-stream request every load run sends (about 190 bytes, like peers.md's)."""
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 64}).encode()


def check(target: Target, stream: bool = True) -> str | None:
    """None if the target answers a chat completion (and, with ``stream``, a stream) correctly, else what
    went wrong. The floors answer non-stream requests only (bench/floors.py)."""
    headers = target.request_headers()
    try:
        with httpx.Client(timeout=30) as client:
            reply = client.post(target.url, content=chat_body(), headers=headers)
            if reply.status_code != 200:
                return f"non-stream request: HTTP {reply.status_code}: {reply.text[:300]}"
            data = reply.json()
            if not data.get("choices") or "usage" not in data:
                return f"non-stream request: not a chat.completion with usage: {reply.text[:300]}"
            if not stream:
                return None
            stream_body = json.dumps(
                {
                    "model": MODEL,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": "Stream. [bench chunks=3 interval_ms=0]"}],
                }
            )
            with client.stream("POST", target.url, content=stream_body, headers=headers) as streamed:
                text = streamed.read().decode(errors="replace")
                if streamed.status_code != 200:
                    return f"stream request: HTTP {streamed.status_code}: {text[:300]}"
                if "data: [DONE]" not in text or '"w0 ' not in text:
                    return f"stream request: no content chunks or no [DONE]: {text[:300]}"
    except (httpx.HTTPError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def overhead(target: Target, requests: int) -> dict[str, object]:
    """Sequential non-stream requests: the distribution of the overhead the target reports itself.

    Reads the ``target.overhead_header`` response header and, for Tollgate, ``x_gateway.overhead_ms`` in
    the body. Empty distributions mean the target does not report it.
    """
    headers = target.request_headers()
    from_header: list[float] = []
    from_body: list[float] = []
    failures = 0
    body = chat_body()
    with httpx.Client(timeout=30) as client:
        for _ in range(requests):
            reply = client.post(target.url, content=body, headers=headers)
            if reply.status_code != 200:
                failures += 1
                continue
            if target.overhead_header and (value := reply.headers.get(target.overhead_header)):
                from_header.append(float(value))
            gateway = reply.json().get("x_gateway")
            if isinstance(gateway, dict) and isinstance(gateway.get("overhead_ms"), int | float):
                from_body.append(float(gateway["overhead_ms"]))
    return {
        "header": target.overhead_header,
        "header_ms": summary(from_header),
        "body_ms": summary(from_body),
        "failures": failures,
    }
