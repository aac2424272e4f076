"""`tollgate serve` refusing to start, as a process (issue #11, items 13 and 14): one line, exit 2,
nothing touched."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.test_serve import CONFIG, ROOT


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


def test_workers_on_an_in_memory_ledger_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Several processes share a ledger file; an in-memory ledger belongs to one process (the one
    multi-process setup still refused, now that several `serve` may follow one ledger: test_workers)."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG + '[ledger]\npath = ":memory:"\n')
    done = serve_once(config, "--port", "0", "--workers", "2")
    assert done.stderr == "tollgate: --workers needs a ledger file: an in-memory ledger belongs to one process\n"
    assert done.returncode == 2 and done.stdout == ""
