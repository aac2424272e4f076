"""The floors of Tollgate's own stack: what one request costs with nothing of ours in it.

Two servers, each a hypercorn trio worker configured like Tollgate's (runtime/http/server.py) serving a
raw ASGI app, run as processes beside the other targets in scenario 1 (bench/scenarios/chat.py):

- ``fixed`` (floor A): reads the request body, answers a fixed chat.completion. No upstream call.
- ``httpx`` (floor B): (A) + forwards the body to the fake upstream with one shared ``httpx.AsyncClient``
  and answers what it got back.

Tollgate's CPU per request divided by these is what its own code costs on top of its HTTP server (A) and
its HTTP server plus its HTTP client (B). Derived from ../shared/research/floors/ (a_fixed.py,
b_httpx.py, common.py)::

    python -m bench.floors fixed --port 0
    python -m bench.floors httpx --port 0 --upstream http://127.0.0.1:PORT/v1/chat/completions --key KEY

Each prints ``listening on http://HOST:PORT`` once bound.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import hypercorn.trio
import trio
from hypercorn.config import Config

from bench.process import Server
from bench.target import UPSTREAM_KEY, Target

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

REPO = Path(__file__).resolve().parent.parent
FIXED = (
    b'{"id":"chatcmpl-floor","object":"chat.completion","created":1700000000,"model":"bench-model",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22}}'
)
KINDS = {
    "fixed": ("floor-a", "floor A: hypercorn + raw ASGI, fixed answer"),
    "httpx": ("floor-b", "floor B: hypercorn + raw ASGI + shared httpx client"),
}
FLOOR_NAMES = frozenset(name for name, _ in KINDS.values())


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _send_json(send: Send, status: int, data: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _lifespan(receive: Receive, send: Send) -> None:
    while (message := await receive())["type"] != "lifespan.shutdown":
        await send({"type": message["type"] + ".complete"})
    await send({"type": "lifespan.shutdown.complete"})


def fixed_app() -> App:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await _read_body(receive)
            await _send_json(send, 200, FIXED)

    return app


def httpx_app(client: httpx.AsyncClient, upstream: str, key: str) -> App:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            body = await _read_body(receive)
            reply = await client.post(upstream, content=body, headers=headers)
            await _send_json(send, reply.status_code, reply.content)

    return app


def hypercorn_config(port: int) -> Config:
    """As Tollgate's runtime/http/server.py configures hypercorn (no access log, no Server header)."""
    cfg = Config()
    cfg.bind = [f"127.0.0.1:{port}"]
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("hypercorn.error")
    cfg.keep_alive_timeout = 75
    cfg.include_server_header = False
    return cfg


async def serve(kind: str, port: int, upstream: str, key: str) -> None:
    cfg = hypercorn_config(port)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits) as client, trio.open_nursery() as nursery:
        app = fixed_app() if kind == "fixed" else httpx_app(client, upstream, key)
        binds = await nursery.start(hypercorn.trio.serve, app, cfg)
        print(f"listening on {binds[0]}", flush=True)


def start(kind: str, workdir: Path, upstream: Target) -> Target:
    """Start floor ``kind`` (fixed or httpx) as its own process; wait for its ``listening on`` line."""
    name, label = KINDS[kind]
    argv = [sys.executable, "-m", "bench.floors", kind, "--port", "0"]
    if kind == "httpx":
        argv += ["--upstream", upstream.url, "--key", UPSTREAM_KEY]
    server = Server(name, argv, workdir / f"{name}.log", cwd=REPO)
    base = server.wait_listening(30)
    return Target(
        name,
        label,
        f"{base}/v1/chat/completions",
        "bench-floor",
        server,
        notes=["the same hypercorn trio worker and settings as Tollgate; no route, no auth, no ledger"],
        version=f"hypercorn {_version('hypercorn')}" + (f", httpx {httpx.__version__}" if kind == "httpx" else ""),
    )


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.floors", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", default="", help="the upstream's chat completions URL (httpx only)")
    parser.add_argument("--key", default=UPSTREAM_KEY, help="the upstream's bearer key (httpx only)")
    args = parser.parse_args(argv)
    if args.kind == "httpx" and not args.upstream:
        parser.error("httpx needs --upstream")
    trio.run(serve, args.kind, args.port, args.upstream, args.key)


if __name__ == "__main__":
    main()
