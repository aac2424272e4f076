"""`tollgate serve` refusing to start, as a process (issue #11, items 13 and 14): one line, exit 2,
nothing touched."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_serve import CONFIG, ROOT, serving


def serve_once(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TOLLGATE_ADMIN_KEY"}  # a key would be generated
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "serve", "--config", str(config), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_busy_port_is_one_line_and_exit_2_before_the_ledger_is_touched(tmp_path: Path) -> None:
    ledger = tmp_path / "var" / "ledger.sqlite3"
    config = tmp_path / "config.toml"
    config.write_text(CONFIG + f'[ledger]\npath = "{ledger}"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve_once(config, "--port", str(port))
    assert done.stderr == f"tollgate: cannot listen on 127.0.0.1:{port}: address already in use\n"
    assert done.returncode == 2 and done.stdout == ""
    assert not ledger.parent.exists()  # no ledger, no projections, no lock file


@pytest.mark.slow
def test_a_second_serve_on_one_ledger_refuses_to_start(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    with serving(tmp_path) as (first, _url):
        second = serve_once(tmp_path / "config.toml", "--port", "0")
        assert second.returncode == 2 and second.stdout == ""
        assert second.stderr == (
            f"tollgate: the ledger {ledger} is in use by another tollgate serve (pid {first.pid});"
            " stop it first or use another [ledger].path\n"
        )
        first.kill()  # the kernel releases the lock even on kill -9
        first.wait(10)
    with serving(tmp_path) as (third, url):
        assert third.poll() is None and url.startswith("http://127.0.0.1:")
