"""Tollgate under test: its config (default settings, ledger on) and its process."""

from __future__ import annotations

import secrets
import shlex
import sys
from pathlib import Path

from bench.process import Server
from bench.target import UPSTREAM_KEY, Target

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CMD = "{python} -m runtime.cli serve --config {config} --host 127.0.0.1 --port 0"
OVERHEAD_HEADER = "x-tollgate-overhead-ms"

CONFIG = """\
# Written by bench/gateway.py: Tollgate in its default configuration, routed to the bench's fake upstream.
[server]
host = "127.0.0.1"
port = 0

[ledger]
path = "{ledger}"

[[providers]]
name = "up"
kind = "openai"
base_url = "{upstream_base}"
api_key_env = "BENCH_UPSTREAM_KEY"
models = ["bench-model"]
max_concurrency = 1024

[pricing."up/bench-model"]
input_per_mtok = "0.50"
output_per_mtok = "1.50"

[[tenants]]
name = "bench"
api_key_env = "BENCH_TENANT_KEY"
"""


def unavailable(cmd_template: str) -> str | None:
    """Why the gateway cannot be started with this command, or None."""
    if cmd_template == DEFAULT_CMD and not (REPO / "runtime" / "cli" / "commands.py").exists():
        return "the gateway does not exist yet (no runtime/cli/commands.py); pass --gateway-cmd to test another"
    return None


def write_config(workdir: Path, upstream_base: str, ledger: str = "sqlite") -> Path:
    """`ledger`: "sqlite" (the default configuration) or "memory" (to measure what the SQLite ledger costs)."""
    path = workdir / f"tollgate-{ledger}.toml"
    where = workdir / "ledger.sqlite3" if ledger == "sqlite" else ":memory:"
    path.write_text(CONFIG.format(ledger=where, upstream_base=upstream_base))
    return path


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return f"tollgate {dist_version('tollgate')}"
    except PackageNotFoundError:
        return "tollgate (source tree, not installed)"


def start(cmd_template: str, workdir: Path, upstream: Target, ledger: str = "sqlite") -> Target:
    """Start the gateway with its generated config; wait for ``listening on`` and ``/readyz``."""
    upstream_base = upstream.url.removesuffix("/chat/completions")
    config = write_config(workdir, upstream_base, ledger)
    argv = shlex.split(
        cmd_template.format(
            python=shlex.quote(sys.executable), config=shlex.quote(str(config)), repo=shlex.quote(str(REPO))
        )
    )
    tenant_key = "tg-bench-" + secrets.token_hex(16)
    server = Server(
        "gateway" if ledger == "sqlite" else "gateway-memory",
        argv,
        workdir / f"gateway-{ledger}.log",
        cwd=REPO,
        env={"BENCH_UPSTREAM_KEY": UPSTREAM_KEY, "BENCH_TENANT_KEY": tenant_key},
    )
    base = server.wait_listening(60)
    server.wait_http(f"{base}/readyz", 30, ok=(200, 404))
    label = "Tollgate, 1 worker" if cmd_template == DEFAULT_CMD else "gateway (--gateway-cmd)"
    notes = [] if cmd_template == DEFAULT_CMD else [f"gateway command: {cmd_template}"]
    if ledger == "memory":
        label += ", in-memory ledger"
        notes.append('in-memory ledger ([ledger] path = ":memory:"): the same code without SQLite, to measure its cost')
    return Target(
        "tollgate" if ledger == "sqlite" else "tollgate-memory",
        label,
        f"{base}/v1/chat/completions",
        tenant_key,
        server,
        overhead_header=OVERHEAD_HEADER,
        notes=notes,
        version=version() if cmd_template == DEFAULT_CMD else cmd_template,
    )
