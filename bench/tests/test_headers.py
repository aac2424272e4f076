"""Extra request headers (Portkey routes by them): how each load generator is given them, and the
pinned Portkey install. wrk's Lua script is driven for real against a loopback server when wrk is here."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.http1 import header_lines, parse_header, request_bytes
from bench.load import LUA, wrk_env
from bench.peers import PORTKEY_OVERRIDES, PORTKEY_PIN, portkey_package_json, portkey_routing_headers
from bench.process import Server
from bench.target import Target

ROUTING = portkey_routing_headers("http://127.0.0.1:18000/v1")


def test_portkey_routing_headers() -> None:
    assert ROUTING == {"x-portkey-provider": "openai", "x-portkey-custom-host": "http://127.0.0.1:18000/v1"}


def test_parse_header_keeps_colons_in_the_value() -> None:
    assert parse_header("x-portkey-custom-host: http://127.0.0.1:18000/v1") == (
        "x-portkey-custom-host",
        "http://127.0.0.1:18000/v1",
    )
    for bad in ("no colon", ": no name", "x: a\r\nInjected: yes"):
        with pytest.raises(ValueError, match="not a header line"):
            parse_header(bad)


def test_header_lines_round_trip_and_refuse_smuggled_lines() -> None:
    lines = header_lines(ROUTING)
    assert lines == ["x-portkey-provider: openai", "x-portkey-custom-host: http://127.0.0.1:18000/v1"]
    assert dict(parse_header(line) for line in lines) == ROUTING
    with pytest.raises(ValueError, match="not a header line"):
        header_lines({"x-a": "1\nx-b: 2"})


def test_request_bytes_carries_the_extra_headers() -> None:
    raw = request_bytes("http://127.0.0.1:8080/v1/chat/completions", b"{}", "sk-up", ROUTING)
    head = raw.partition(b"\r\n\r\n")[0].decode() + "\r\n"
    assert "Authorization: Bearer sk-up\r\n" in head
    assert "x-portkey-provider: openai\r\n" in head
    assert "x-portkey-custom-host: http://127.0.0.1:18000/v1\r\n" in head


def test_wrk_env() -> None:
    env = wrk_env("/tmp/body.json", "sk-up", ROUTING)
    assert env == {
        "BENCH_WRK_BODY_FILE": "/tmp/body.json",
        "BENCH_WRK_BEARER": "sk-up",
        "BENCH_WRK_HEADERS": "x-portkey-provider: openai\nx-portkey-custom-host: http://127.0.0.1:18000/v1",
    }
    assert wrk_env("/b", "k", {})["BENCH_WRK_HEADERS"] == ""


def test_target_request_headers(tmp_path: Path) -> None:
    server = Server("noop", ["true"], tmp_path / "noop.log")
    try:
        target = Target("portkey", "Portkey", "http://x/v1/chat/completions", "sk-up", server, headers=ROUTING)
        assert target.request_headers() == {
            "authorization": "Bearer sk-up",
            "content-type": "application/json",
            **ROUTING,
        }
    finally:
        server.stop()


def test_portkey_package_json_pins_the_gateway_and_the_lockfile_overrides() -> None:
    doc = json.loads(portkey_package_json())
    assert doc["dependencies"] == {"@portkey-ai/gateway": PORTKEY_PIN} == {"@portkey-ai/gateway": "1.15.2"}
    assert doc["overrides"] == PORTKEY_OVERRIDES
    assert doc["overrides"]["@hono/node-server"] == "1.13.5"  # a newer one breaks every stream
    assert doc["overrides"]["hono"] == "4.9.7"


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A loopback HTTP server that answers every POST with {} and records its headers."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (the bench installs it on first run)")
def test_wrk_script_sends_the_extra_headers(recorder: tuple[str, list[dict[str, str]]], tmp_path: Path) -> None:
    url, seen = recorder
    body = tmp_path / "body.json"
    body.write_bytes(b'{"model":"m"}')
    out = subprocess.run(
        ["wrk", "-t1", "-c1", "-d1s", "-s", str(LUA), url],
        env=wrk_env(str(body), "sk-up", ROUTING),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "BENCH_WRK " in out.stdout
    assert seen
    first = seen[0]
    assert first["authorization"] == "Bearer sk-up"
    assert first["x-portkey-provider"] == "openai"
    assert first["x-portkey-custom-host"] == "http://127.0.0.1:18000/v1"
