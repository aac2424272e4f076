"""A server under measurement: where to send requests, with which key, and which process to watch."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.process import Server

UPSTREAM_KEY = "sk-bench-upstream"


@dataclass
class Target:
    """``name`` keys the results (direct, tollgate, litellm); ``label`` is what the table shows."""

    name: str
    label: str
    url: str  # the chat completions URL
    bearer: str
    server: Server
    overhead_header: str | None = None
    notes: list[str] = field(default_factory=list)
    version: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request (Portkey routes by them)

    def request_headers(self) -> dict[str, str]:
        """Every header a request to this target carries: its bearer key, JSON, and its own headers."""
        return {"authorization": f"Bearer {self.bearer}", "content-type": "application/json", **self.headers}

    @property
    def pid(self) -> int:
        return self.server.pid


def start_upstream(workdir: Path) -> Target:
    """The fake upstream (bench/upstream.py) in its own process on an ephemeral loopback port."""
    server = Server(
        "upstream",
        [
            sys.executable,
            "-m",
            "bench.upstream",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--chunks",
            "20",
            "--chunk-interval-ms",
            "20",
        ],
        workdir / "upstream.log",
        cwd=Path(__file__).parent.parent,
    )
    base = server.wait_listening(15)
    return Target(
        "direct",
        "direct fake upstream",
        f"{base}/v1/chat/completions",
        UPSTREAM_KEY,
        server,
        version="bench/upstream.py (stdlib asyncio)",
    )
