"""A fast fake OpenAI-compatible upstream: stdlib asyncio, HTTP/1.1 keep-alive, written by hand.

Run it as its own process::

    python -m bench.upstream --port 0 --latency-ms 0 --chunks 20 --chunk-interval-ms 20

It prints ``listening on http://HOST:PORT`` once bound. It answers

- ``POST /v1/chat/completions``: a chat.completion with ``usage``, or with ``"stream": true`` an SSE
  stream in OpenAI's exact format: a role chunk, one chunk per content word (``w0 ``, ``w1 ``, ...),
  a finish chunk, the usage chunk (``choices: []``) when ``stream_options.include_usage`` is set, and
  ``data: [DONE]``. Content word ``k`` is paced to leave at ``start + k * interval``.
- ``GET /v1/models``, ``GET /healthz``.

Each request may override the process defaults, so one upstream serves every scenario:

- headers ``x-bench-latency-ms``, ``x-bench-chunks``, ``x-bench-interval-ms``;
- or a directive anywhere in the last message's content, ``[bench chunks=150 interval_ms=20
  latency_ms=0]``, which survives any gateway that forwards the messages (headers usually do not).

Parsing is deliberately minimal (request line, headers, a Content-Length body; no pipelining of
responses, since no client here pipelines): the point is to cost the gateway under test nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import re
import sys
import time
from collections.abc import Mapping

DIRECTIVE = re.compile(r"\[bench ([^\]]*)\]")
_ids = itertools.count(1)


class Behaviour:
    """How one response is shaped: first-byte latency, content chunk count and their pacing."""

    __slots__ = ("chunks", "interval_s", "latency_s")

    def __init__(self, latency_s: float, chunks: int, interval_s: float) -> None:
        self.latency_s = latency_s
        self.chunks = chunks
        self.interval_s = interval_s

    def steered(self, headers: Mapping[bytes, bytes], content: str) -> Behaviour:
        """The process defaults, overridden by ``x-bench-*`` headers, then by a content directive."""
        values = {
            "latency_ms": headers.get(b"x-bench-latency-ms"),
            "chunks": headers.get(b"x-bench-chunks"),
            "interval_ms": headers.get(b"x-bench-interval-ms"),
        }
        match = DIRECTIVE.search(content) if "[bench " in content else None
        if match:
            for pair in match.group(1).split():
                key, _, value = pair.partition("=")
                if key in values:
                    values[key] = value.encode()
        latency, chunks, interval = self.latency_s, self.chunks, self.interval_s
        if values["latency_ms"] is not None:
            latency = float(values["latency_ms"]) / 1000
        if values["chunks"] is not None:
            chunks = max(1, int(values["chunks"]))
        if values["interval_ms"] is not None:
            interval = float(values["interval_ms"]) / 1000
        return Behaviour(latency, chunks, interval)


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _error(status: str, message: str) -> bytes:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    return _response(status, json.dumps(body).encode())


def _prompt_tokens(messages: object) -> int:
    """A rough count (4 characters a token), enough for usage figures to be plausible."""
    if not isinstance(messages, list):
        return 1
    chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
    return max(1, chars // 4 + 3 * len(messages))


def _last_content(messages: object) -> str:
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content", "")
        return content if isinstance(content, str) else json.dumps(content)
    return ""


def _chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class Stream:
    """One SSE response in flight: writes content chunk ``k`` at ``start + k * interval``."""

    def __init__(
        self, conn: UpstreamProtocol, model: str, behaviour: Behaviour, prompt_tokens: int, include_usage: bool
    ) -> None:
        self.conn = conn
        self.behaviour = behaviour
        self.prompt_tokens = prompt_tokens
        self.include_usage = include_usage
        self.next_index = 0
        self.handle: asyncio.TimerHandle | None = None
        usage = b',"usage":null' if include_usage else b""
        head = json.dumps(
            {
                "id": f"chatcmpl-bench{next(_ids)}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": None,
            },
            separators=(",", ":"),
        )[:-1].encode()
        self.head = b"data: " + head
        self.content_prefix = self.head + b',"choices":[{"index":0,"delta":{"content":"'
        self.content_suffix = b'"},"logprobs":null,"finish_reason":null}]' + usage + b"}\n\n"
        self.role = (
            self.head + b',"choices":[{"index":0,"delta":{"role":"assistant","content":"",'
            b'"refusal":null},"logprobs":null,"finish_reason":null}]' + usage + b"}\n\n"
        )
        self.finish = (
            self.head + b',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]' + usage + b"}\n\n"
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.started = loop.time()
        self.conn.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        self._tick(first=True)

    def _tick(self, first: bool = False) -> None:
        self.handle = None
        transport = self.conn.transport
        if transport.is_closing():
            return
        b = self.behaviour
        out = bytearray(self.role if first else b"")
        now = self.loop.time()
        # Write every chunk that is due (several at once when there is no pacing).
        while self.next_index < b.chunks:
            due = self.started + self.next_index * b.interval_s
            if due > now and b.interval_s > 0:
                break
            out += self.content_prefix + b"w%d " % self.next_index + self.content_suffix
            self.next_index += 1
        if self.next_index >= b.chunks:
            out += self.finish
            if self.include_usage:
                usage = {
                    "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": b.chunks,
                    "total_tokens": self.prompt_tokens + b.chunks,
                }
                out += (
                    self.head + b',"choices":[],"usage":' + json.dumps(usage, separators=(",", ":")).encode() + b"}\n\n"
                )
            out += b"data: [DONE]\n\n"
            transport.write(_chunk(bytes(out)) + b"0\r\n\r\n")
            self.conn.finished()
            return
        transport.write(_chunk(bytes(out)))
        self.handle = self.loop.call_at(self.started + self.next_index * b.interval_s, self._tick)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


# x-request-id → time.monotonic() (system-wide on Linux) when a stream's connection was lost mid-stream:
# the disconnect scenario compares it with the moment its client hung up on the gateway.
CLOSED: dict[str, float] = {}


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests from the buffer, one response at a time."""

    defaults: Behaviour = Behaviour(0.0, 20, 0.02)

    def __init__(self) -> None:
        self.buf = bytearray()
        self.busy = False
        self.close_after = False
        self.stream: Stream | None = None
        self.stream_id = ""
        self.pending: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            if self.stream_id:
                CLOSED[self.stream_id] = time.monotonic()
            self.stream.cancel()
        if self.pending is not None:
            self.pending.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next_request()

    def finished(self) -> None:
        """The current response is fully written: serve the next buffered request, if any."""
        self.busy = False
        self.stream = None
        self.pending = None
        if self.close_after:
            self.transport.close()
        elif self.buf:
            self._next_request()

    def _next_request(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self.buf[:end]).split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            self.transport.write(_error("400 Bad Request", "bad request line"))
            self.transport.close()
            return
        method, target, version = parts
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            self.transport.write(_error("411 Length Required", "send a Content-Length body"))
            self.transport.close()
            return
        length = int(headers.get(b"content-length", b"0"))
        if len(self.buf) < end + 4 + length:
            return
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        connection = headers.get(b"connection", b"").lower()
        self.close_after = connection == b"close" or (version == b"HTTP/1.0" and connection != b"keep-alive")
        self.busy = True
        self._dispatch(method, target.split(b"?")[0], headers, body)

    def _dispatch(self, method: bytes, path: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        if method == b"POST" and path.endswith(b"/chat/completions"):
            self._chat(headers, body)
        elif method == b"GET" and path.endswith(b"/models"):
            models = {
                "object": "list",
                "data": [{"id": "bench-model", "object": "model", "created": 0, "owned_by": "bench"}],
            }
            self._reply(_response("200 OK", json.dumps(models).encode()))
        elif method == b"GET" and path == b"/bench/closed":
            self._reply(_response("200 OK", json.dumps(CLOSED).encode()))
        elif method == b"GET" and path in (b"/healthz", b"/readyz", b"/"):
            self._reply(_response("200 OK", b'{"status":"ok"}'))
        else:
            self._reply(_error("404 Not Found", f"no route for {path.decode(errors='replace')}"))

    def _reply(self, data: bytes) -> None:
        self.transport.write(data)
        self.finished()

    def _chat(self, headers: dict[bytes, bytes], body: bytes) -> None:
        try:
            request = json.loads(body)
            messages = request["messages"]
            model = str(request.get("model", "bench-model"))
        except (ValueError, KeyError, TypeError):
            self._reply(_error("400 Bad Request", "expected a JSON body with messages"))
            return
        behaviour = self.defaults.steered(headers, _last_content(messages))
        prompt_tokens = _prompt_tokens(messages)
        if request.get("stream"):
            options = request.get("stream_options") or {}
            stream = Stream(self, model, behaviour, prompt_tokens, bool(options.get("include_usage")))
            self.stream = stream
            self.stream_id = headers.get(b"x-request-id", b"").decode()
            self._later(behaviour.latency_s, lambda: stream.start(self.loop))
            return
        text = "".join(f"w{k} " for k in range(behaviour.chunks))
        completion = {
            "id": f"chatcmpl-bench{next(_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": behaviour.chunks,
                "total_tokens": prompt_tokens + behaviour.chunks,
            },
        }
        data = _response("200 OK", json.dumps(completion, separators=(",", ":")).encode())
        self._later(behaviour.latency_s, lambda: self._reply(data))

    def _later(self, delay_s: float, action: object) -> None:
        assert callable(action)
        if delay_s <= 0:
            action()
        else:

            def run() -> None:
                self.pending = None
                if not self.transport.is_closing():
                    action()

            self.pending = self.loop.call_later(delay_s, run)


async def serve(host: str, port: int, defaults: Behaviour) -> None:
    UpstreamProtocol.defaults = defaults
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()
    print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.upstream", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 binds an ephemeral port (printed)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before the first byte")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks (words) per response")
    parser.add_argument("--chunk-interval-ms", type=float, default=20.0, help="pacing of stream chunks")
    args = parser.parse_args(argv)
    gc.freeze()  # the server's objects are long-lived; keep the collector off them
    defaults = Behaviour(args.latency_ms / 1000, args.chunks, args.chunk_interval_ms / 1000)
    try:
        asyncio.run(serve(args.host, args.port, defaults))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
