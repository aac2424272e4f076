"""Server processes the bench starts, waits for, measures and stops (only the ones it started)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

LISTENING = re.compile(r"listening on (http://[^\s:]+:(\d+))")


class StartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago (for servers that cannot bind port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Server:
    """A child process in its own session, its output appended to a log file."""

    def __init__(
        self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.url = ""
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self._pump: threading.Thread | None = None

    def wait_listening(self, timeout_s: float = 60.0) -> str:
        """Wait for the ``listening on http://HOST:PORT`` line; then keep copying stdout to the log."""
        assert self.proc.stdout is not None
        found: list[str] = []
        done = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                self._log_file.write(raw)
                self._log_file.flush()
                if not found and (match := LISTENING.search(raw.decode(errors="replace"))):
                    found.append(match.group(1))
                    done.set()
            done.set()

        self._pump = threading.Thread(target=pump, name=f"{self.name}-stdout", daemon=True)
        self._pump.start()
        if not done.wait(timeout_s) or not found:
            self.stop()
            raise StartError(
                f"{self.name} did not print 'listening on' within {timeout_s:.0f} s "
                f"(exit {self.proc.poll()}); log {self.log}:\n{_tail(self.log)}"
            )
        self.url = found[0]
        return self.url

    def drain_stdout(self) -> None:
        """Copy stdout to the log in the background (for servers that announce nothing)."""

        def pump() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                self._log_file.write(raw)
                self._log_file.flush()

        self._pump = threading.Thread(target=pump, name=f"{self.name}-stdout", daemon=True)
        self._pump.start()

    def wait_http(self, url: str, timeout_s: float, ok: Sequence[int] = (200,)) -> None:
        """Poll url until it answers with one of ok; fail early if the process exits."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                status = httpx.get(url, timeout=2.0).status_code
                if status in ok:
                    return
                last = f"HTTP {status}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        self.stop()
        raise StartError(
            f"{self.name} not ready at {url} within {timeout_s:.0f} s ({last}, exit "
            f"{self.proc.poll()}); log {self.log}:\n{_tail(self.log)}"
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        """Signal this server's own process group, wait, then kill it if it lingers."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, sig)
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        if self._pump is not None:
            self._pump.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log_file.close()
