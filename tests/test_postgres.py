"""The PostgreSQL ledger, on a real throwaway server (tests/postgres.py): the gateway end to end,
restart, `replay --verify`, re-pricing, `tollgate ledger copy` both ways, and clear start errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from events.projections import Projections
from events.store import MEMORY, LedgerError, LedgerStore
from events.tenant import Tenant
from runtime.auth import DEMO_KEY, hash_key
from runtime.ledger.copy import copy_ledger, summarize
from runtime.ledger.projector import catch_up
from runtime.ledger.replay import verify_open
from tests.fake_openai import fake_openai
from tests.harness import ADMIN, make_config, openai_provider, running_gateway
from tests.postgres import PASSWORD, PASSWORD_ENV
from tests.test_replay import run_workload

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}

WORKLOAD: list[tuple[Any, ...]] = [
    ("chat", "sim-1", False, 12),
    ("chat", "sim-1", True, 30),
    ("tenant", "a", 40),
    ("chat", "gpt-test", False, 5),
    ("upstream", 500),
    ("chat", "gpt-test", True, 7),
    ("upstream", 200),
    ("price", "up/gpt-test", 3, None),
    ("chat", "fast", False, 9),
    ("bad_request", b"{"),
    ("rotate", "a"),
    ("reprice", "flat", 7, True),
    ("chat", "nope", False, 3),
    ("reprice", "ledger", 0, True),
    ("price", "sim/sim-1", 5, "2020-01-01T00:00:00Z"),
    ("chat", "sim-1", True, 20),
]


def _config(ledger: dict[str, Any], fake_url: str) -> Any:
    return make_config(
        providers=[
            {"name": "sim", "kind": "simulator", "models": ["sim-1"]},
            openai_provider(fake_url, models=("gpt-test",)),
        ],
        models={"fast": {"deployments": [{"provider": "up", "model": "llama"}, {"provider": "sim", "model": "sim-1"}]}},
        pricing={"sim/sim-1": {"input_per_mtok": "1", "output_per_mtok": "2"}},
        ledger=ledger,
    )


async def _run_workload(ledger: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The workload through the real gateway; its spend totals and a live replay check."""
    async with fake_openai() as fake, running_gateway(_config(ledger, fake.url)) as gw, gw.http() as http:
        await run_workload(http, fake, WORKLOAD)
        gateway = gw.gateway
        await gateway.projector.wait_for(gateway.journal.position)

        def check() -> list[str]:
            return verify_open(gateway.store, gateway.projector.projections)

        problems = await trio.to_thread.run_sync(check, limiter=gateway.projector._limiter)
        spend = (await http.get("/admin/spend", headers=ADMIN)).json()["totals"]
    return spend, problems


async def _spend_after_restart(ledger: dict[str, Any]) -> tuple[dict[str, Any], int]:
    async with fake_openai() as fake, running_gateway(_config(ledger, fake.url)) as gw, gw.http() as http:
        spend = (await http.get("/admin/spend", headers=ADMIN)).json()["totals"]
        created = await http.post("/admin/tenants", json={"name": "after-restart"}, headers=ADMIN)
        key = created.json()["api_key"]
        answer = await http.post(
            "/v1/chat/completions",
            json={"model": "sim-1", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"},
        )
    return spend, answer.status_code


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _config_file(tmp_path: Path, ledger: str) -> Path:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(
        f"""[ledger]
{ledger}
[[providers]]
name = "sim"
kind = "simulator"
models = ["sim-1"]
[[tenants]]
name = "demo"
api_key_sha256 = "{hash_key(DEMO_KEY)}"
"""
    )
    return path


async def test_the_gateway_on_a_postgres_ledger_end_to_end(postgres_url: str, tmp_path: Path) -> None:
    ledger = {"url": postgres_url, "password_env": PASSWORD_ENV}
    spend, problems = await _run_workload(ledger)
    assert problems == []
    assert spend["requests"] >= 6 and spend["cost_usd"] != "0"
    # A restart reads the spend back from PostgreSQL and serves a tenant created after it.
    again, status = await _spend_after_restart(ledger)
    assert again == spend
    assert status == 200
    # The same workload on SQLite records the same spend (same events, same folds).
    sqlite_ledger = {"path": str(tmp_path / "ledger.sqlite3")}
    sqlite_spend, sqlite_problems = await _run_workload(sqlite_ledger)
    assert sqlite_problems == []
    assert sqlite_spend == spend
    await _spend_after_restart(sqlite_ledger)
    config = _config_file(tmp_path, f'url = "{postgres_url}"\npassword_env = "{PASSWORD_ENV}"')
    verified = _cli("replay", "--verify", "--config", str(config))
    assert verified.returncode == 0, verified.stderr
    assert "folds the same paged and whole (PostgreSQL)" in verified.stdout
    # Re-pricing reads PostgreSQL through the mapper and SQLite through its JSON fast path: same answer.
    prices = tmp_path / "prices.toml"
    prices.write_text('[pricing."sim/sim-1"]\ninput_per_mtok = "100"\noutput_per_mtok = "200"\n')
    reports = []
    for ledger in (config, _config_file(tmp_path / "sqlite", f'path = "{tmp_path / "ledger.sqlite3"}"')):
        repriced = _cli("reprice", "--offline", "--config", str(ledger), "--prices", str(prices), "--format", "json")
        assert repriced.returncode == 0, repriced.stderr
        report = json.loads(repriced.stdout)
        reports.append((report["rows"], report["totals"]))
    assert reports[0] == reports[1]
    assert reports[0][1]["restated"] > 0


async def test_ledger_copy_sqlite_to_postgres_and_back(postgres_url: str, tmp_path: Path) -> None:
    source = tmp_path / "a" / "ledger.sqlite3"
    spend, _ = await _run_workload({"path": str(source)})
    copied = _cli(
        "ledger", "copy", "--from", f"sqlite:///{source}", "--to", postgres_url, "--to-password-env", PASSWORD_ENV
    )
    assert copied.returncode == 0, copied.stderr
    assert "copied and verified" in copied.stdout
    back = tmp_path / "b" / "ledger.sqlite3"
    returned = _cli("ledger", "copy", "--from", postgres_url, "--from-password-env", PASSWORD_ENV, "--to", str(back))
    assert returned.returncode == 0, returned.stderr
    stores = [LedgerStore(str(source)), LedgerStore(postgres_url, PASSWORD), LedgerStore(str(back))]
    try:
        summaries = [summarize(store) for store in stores]
    finally:
        for store in stores:
            store.close()
    assert summaries[0].count > 20
    assert summaries[0] == summaries[1] == summaries[2]
    # The copy's projections were rebuilt: replay --verify is clean and the spend is the source's.
    verified = _cli("replay", "--verify", "--config", str(_config_file(tmp_path, f'path = "{back}"')))
    assert verified.returncode == 0, verified.stderr
    again, _ = await _spend_after_restart({"path": str(back)})
    assert again == spend
    # A non-empty target is refused, and nothing is appended to it.
    refused = _cli("ledger", "copy", "--from", str(source), "--to", postgres_url, "--to-password-env", PASSWORD_ENV)
    assert refused.returncode == 1
    assert "already holds events" in refused.stderr
    store = LedgerStore(postgres_url, PASSWORD)
    try:
        assert store.position() == summaries[0].last_position
    finally:
        store.close()


def test_bad_postgres_ledgers_stop_the_start_with_a_clear_message(postgres_url: str, tmp_path: Path) -> None:
    cases = [
        (
            f'url = "{postgres_url}"\npassword_env = "{PASSWORD_ENV}"',
            {PASSWORD_ENV: "wrong-password"},
            "password authentication failed",
        ),
        (
            f'url = "{postgres_url}"\npassword_env = "NOT_SET_ANYWHERE"',
            {},
            "environment variable NOT_SET_ANYWHERE is not set",
        ),
        ('url = "postgresql://tollgate@127.0.0.1:1/ledger"', {}, "Connection refused"),
        ('url = "postgresql://tollgate:secret-pw@127.0.0.1/ledger"', {}, "password_env"),
        ('url = "mysql://x@y/z"', {}, "expected sqlite:///PATH or postgresql://"),
        ('url = "postgresql://127.0.0.1/ledger"', {}, "expected postgresql://USER@HOST:PORT/DATABASE"),
    ]
    for ledger, env, message in cases:
        config = _config_file(tmp_path, ledger)
        for command in (["serve", "--port", "0"], ["replay", "--verify"]):
            result = _cli(*command, "--config", str(config), env={"TOLLGATE_ADMIN_KEY": "tga-x", **env})
            assert result.returncode == 2, (ledger, command, result.stdout, result.stderr)
            assert message in result.stderr, (ledger, command, result.stderr)
            assert "Traceback" not in result.stderr
            assert "wrong-password" not in result.stderr and "secret-pw" not in result.stderr


async def test_a_sqlite_url_is_the_path_s_long_form(tmp_path: Path) -> None:
    ledger = tmp_path / "var" / "ledger.sqlite3"
    config = make_config(ledger={"url": f"sqlite:///{ledger}"})
    assert config.ledger.location == str(ledger)
    async with running_gateway(config) as gw, gw.http() as http:
        answer = await http.post(
            "/v1/chat/completions",
            json={"model": "sim-1", "messages": [{"role": "user", "content": "hi"}]},
            headers=AUTH,
        )
        assert answer.status_code == 200
    store = LedgerStore(str(ledger))
    try:
        assert store.position() > 0
    finally:
        store.close()


def test_a_rolled_back_append_leaves_a_gap_that_every_reader_steps_over(postgres_url: str, tmp_path: Path) -> None:
    """A failed insert consumes a sequence value: positions are increasing, not dense, on PostgreSQL.
    Readers page by "after the last position", so the fold sees every event; a copy to SQLite has
    dense positions and the copy's check says exactly that."""
    store = LedgerStore(postgres_url, PASSWORD)
    try:
        store.append([Tenant.register("twin", "a" * 64, {}, "api")])
        with pytest.raises(LedgerError):
            store.append([Tenant.register("twin", "b" * 64, {}, "api")])  # same aggregate id: refused
        store.append([Tenant.register("other", "c" * 64, {}, "api")])
        positions = [r.position for r in store.read_all()]
        assert positions == [1, 3]
        projections = Projections(MEMORY)
        try:
            assert catch_up(store, projections) == 3
            assert sorted(row["name"] for row in projections.rows("tenants")) == ["other", "twin"]
        finally:
            projections.close()
        target = LedgerStore(str(tmp_path / "copy.sqlite3"))
        try:
            problems = copy_ledger(store, target)
            assert [r.position for r in target.read_all()] == [1, 2]
        finally:
            target.close()
    finally:
        store.close()
    assert problems == [
        "last position: source 3, copy 2 (the source has gaps)",
        "hash: the events' positions differ but every event's stored state matches",
    ]
