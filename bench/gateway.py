"""Tollgate under test: its config (default settings, ledger on) and its process, and its twins.

A twin is the same Tollgate with one thing changed (a `Variant`), run beside the default one in scenario 1
to price that thing: the SQLite ledger (`memory`), the PostgreSQL ledger instead of SQLite (`postgres`:
a throwaway server from tests/postgres.py, started on first use and stopped at exit), the metrics
and access log (`no-obs`), or one process (`workers-2`: `serve --workers 2`, two worker processes on
one port and one ledger).
"""

from __future__ import annotations

import atexit
import secrets
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.process import Server
from bench.target import UPSTREAM_KEY, Target
from tests.postgres import PASSWORD, PostgresServer

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CMD = "{python} -m runtime.cli serve --config {config} --host 127.0.0.1 --port 0"
OVERHEAD_HEADER = "x-tollgate-overhead-ms"

CONFIG = """\
# Written by bench/gateway.py: Tollgate in its default configuration, routed to the bench's fake upstream.
[server]
host = "127.0.0.1"
port = 0

[ledger]
{ledger}
{extra}
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
{tenant_extra}"""


@dataclass(frozen=True)
class Variant:
    """One configuration of Tollgate under test: its target name, label suffix, config and note."""

    name: str  # "" for the default configuration
    label: str = ""
    memory_ledger: bool = False
    postgres_ledger: bool = False
    extra_config: str = ""
    serve_args: str = ""  # appended to the default command's `serve` arguments
    note: str = ""
    tenant_config: str = ""  # lines added to the bench tenant's `[[tenants]]` entry

    @property
    def target(self) -> str:
        return f"tollgate-{self.name}" if self.name else "tollgate"


DEFAULT = Variant("")
MEMORY = Variant(
    "memory",
    label=", in-memory ledger",
    memory_ledger=True,
    note='in-memory ledger ([ledger] path = ":memory:"): the same code without SQLite, to measure its cost',
)
POSTGRES = Variant(
    "postgres",
    label=", PostgreSQL ledger",
    postgres_ledger=True,
    note="PostgreSQL ledger ([ledger] url = postgresql://...): a throwaway PostgreSQL 15 on this machine "
    "(fsync off, loopback TCP), projections in memory; to compare its CPU cost with SQLite's. CPU ms/req "
    "counts the gateway's processes only, not the PostgreSQL server's",
)
NO_OBS = Variant(
    "no-obs",
    label=", no metrics or access log",
    extra_config="\n[metrics]\nenabled = false\n\n[logging]\naccess = false\n",
    note="[metrics] enabled = false (no /metrics route and no live-gauge collector; the in-process counters "
    "still count: no setting turns them off) and [logging] access = false; to measure what observability costs",
)
WORKERS_2 = Variant(
    "workers-2",
    label=", 2 workers",
    serve_args="--workers 2",
    note="serve --workers 2: two worker processes sharing the port and the SQLite ledger (each follows the "
    "log the other writes); its req/s over the default's is the throughput ratio (#13's goal ≥ 1.7×, on two "
    "cores that the load generator shares)",
)
TWINS = (MEMORY, POSTGRES, NO_OBS, WORKERS_2)
CACHE = Variant(
    "cache",
    label=", response cache on",
    tenant_config='cache = "all"\n',
    note='the bench tenant with cache = "all" (run by the cache scenario only, not beside the chat twins)',
)
PG_PASSWORD_ENV = "BENCH_PG_PASSWORD"
_postgres: list[PostgresServer] = []


def _postgres_ledger() -> str:
    """The `[ledger]` lines of a fresh database on the bench's own throwaway PostgreSQL server."""
    if not _postgres:
        _postgres.append(PostgresServer().start())
        atexit.register(_postgres[0].stop)
    return f'url = "{_postgres[0].database()}"\npassword_env = "{PG_PASSWORD_ENV}"'


TWIN_NAMES = frozenset(v.target for v in TWINS)


def unavailable(cmd_template: str) -> str | None:
    """Why the gateway cannot be started with this command, or None."""
    if cmd_template == DEFAULT_CMD and not (REPO / "runtime" / "cli" / "commands.py").exists():
        return "the gateway does not exist yet (no runtime/cli/commands.py); pass --gateway-cmd to test another"
    return None


def write_config(workdir: Path, upstream_base: str, variant: Variant = DEFAULT) -> Path:
    """The default configuration, changed as the variant says."""
    path = workdir / f"{variant.target}.toml"
    if variant.postgres_ledger:
        ledger = _postgres_ledger()
    else:
        where = (
            ":memory:"
            if variant.memory_ledger
            else workdir / f"ledger{'-' + variant.name if variant.name else ''}.sqlite3"
        )
        ledger = f'path = "{where}"'
    path.write_text(
        CONFIG.format(
            ledger=ledger, upstream_base=upstream_base, extra=variant.extra_config, tenant_extra=variant.tenant_config
        )
    )
    return path


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return f"tollgate {dist_version('tollgate')}"
    except PackageNotFoundError:
        return "tollgate (source tree, not installed)"


def start(cmd_template: str, workdir: Path, upstream: Target, variant: Variant = DEFAULT) -> Target:
    """Start the gateway with its generated config; wait for ``listening on`` and ``/readyz``."""
    upstream_base = upstream.url.removesuffix("/chat/completions")
    config = write_config(workdir, upstream_base, variant)
    argv = shlex.split(
        cmd_template.format(
            python=shlex.quote(sys.executable), config=shlex.quote(str(config)), repo=shlex.quote(str(REPO))
        )
    )
    if cmd_template == DEFAULT_CMD:
        argv += shlex.split(variant.serve_args)
    tenant_key = "tg-bench-" + secrets.token_hex(16)
    server = Server(
        variant.target.replace("tollgate", "gateway"),
        argv,
        workdir / f"{variant.target.replace('tollgate', 'gateway')}.log",
        cwd=REPO,
        env={"BENCH_UPSTREAM_KEY": UPSTREAM_KEY, "BENCH_TENANT_KEY": tenant_key, PG_PASSWORD_ENV: PASSWORD},
    )
    base = server.wait_listening(60)
    server.wait_http(f"{base}/readyz", 30, ok=(200, 404))
    label = "Tollgate, 1 worker" if cmd_template == DEFAULT_CMD else "gateway (--gateway-cmd)"
    notes = [] if cmd_template == DEFAULT_CMD else [f"gateway command: {cmd_template}"]
    label += variant.label
    if variant.note:
        notes.append(variant.note)
    return Target(
        variant.target,
        label,
        f"{base}/v1/chat/completions",
        tenant_key,
        server,
        overhead_header=OVERHEAD_HEADER,
        notes=notes,
        version=version() if cmd_template == DEFAULT_CMD else cmd_template,
    )
