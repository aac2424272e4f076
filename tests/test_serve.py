"""`tollgate serve` as users run it: a process, a real port, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from runtime.auth import DEMO_KEY, hash_key

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}

CONFIG = f"""
[server]
host = "127.0.0.1"
port = 8080
grace_period_s = 5.0
[[providers]]
name = "sim"
kind = "simulator"
models = ["sim-1"]
[providers.simulator]
reply_tokens = 20
chunk_interval_ms = 40
[[tenants]]
name = "demo"
api_key_sha256 = "{hash_key(DEMO_KEY)}"
"""


@contextmanager
def serving(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG + f'[ledger]\npath = "{tmp_path / "ledger.sqlite3"}"\n')
    env = {**os.environ, "TOLLGATE_ADMIN_KEY": "tga-serve-test"}
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", "--config", str(path), "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line + process.stderr.read() if process.stderr else ""
        yield process, line.split()[-1]
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()


def test_serve_reports_its_port_and_is_ready(tmp_path: Path) -> None:
    with serving(tmp_path) as (process, url):
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
        assert httpx.get(url + "/readyz").status_code == 200
        models = httpx.get(url + "/v1/models", headers=AUTH).json()
        assert models == {
            "object": "list",
            "data": [{"id": "sim-1", "object": "model", "created": 0, "owned_by": "tollgate"}],
        }
        providers = httpx.get(url + "/admin/providers", headers={"Authorization": "Bearer tga-serve-test"}).json()
        assert providers["providers"][0]["name"] == "sim" and providers["providers"][0]["state"] == "up"
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0


def test_sigterm_lets_an_in_flight_stream_finish(tmp_path: Path) -> None:
    with serving(tmp_path) as (process, url):
        started = threading.Event()
        result: dict[str, str] = {}

        def stream() -> None:
            body = {"model": "sim-1", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=AUTH, timeout=20) as response:
                text = ""
                for piece in response.iter_text():
                    text += piece
                    started.set()
                result["text"] = text

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(10)
        process.send_signal(signal.SIGTERM)
        reader.join(20)
        assert result["text"].endswith("data: [DONE]\n\n")
        assert result["text"].count('"content"') >= 20
        assert process.wait(10) == 0
        assert process.stderr is not None
        assert "draining" in process.stderr.read()
