"""The `tollgate` command as users run it: a process, against ledger files or a running gateway."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import trio

from runtime.auth import DEMO_KEY
from tests.harness import ADMIN, ADMIN_KEY, make_config, running_gateway

ROOT = Path(__file__).resolve().parent.parent
PROMPT = [{"role": "user", "content": "hi"}]
PRICING = {"sim/sim-1": {"input_per_mtok": "10", "output_per_mtok": "20"}}
DEMO = {"Authorization": f"Bearer {DEMO_KEY}"}


def tollgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TOLLGATE_ADMIN_KEY": ADMIN_KEY} if env is None else env,
        check=False,
        timeout=60,
    )


@pytest.mark.slow
async def test_offline_commands_need_only_the_ledger_table(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    async with running_gateway(make_config(pricing=PRICING, ledger={"path": str(ledger)})) as gw, gw.http() as http:
        answer = await http.post("/v1/chat/completions", json={"model": "sim-1", "messages": PROMPT}, headers=DEMO)
        assert answer.status_code == 200
    config = tmp_path / "config.toml"
    config.write_text(
        f'[ledger]\npath = "{ledger}"\n\n'
        '[[providers]]\nname = "up"\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'api_key_env = "TOLLGATE_TEST_UNSET_UPSTREAM_KEY"\nmodels = ["gpt-test"]\n\n'
        '[[tenants]]\nname = "t"\napi_key_env = "TOLLGATE_TEST_UNSET_TENANT_KEY"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE")}
    checked = await trio.to_thread.run_sync(lambda: tollgate("check-config", "--config", str(config), env=env))
    assert checked.returncode == 2, "the secrets are unset: serving needs them"

    verified = await trio.to_thread.run_sync(lambda: tollgate("replay", "--verify", "--config", str(config), env=env))
    assert verified.returncode == 0, verified.stderr
    assert "match" in verified.stdout

    repriced = await trio.to_thread.run_sync(
        lambda: tollgate(
            "reprice", "--ledger-prices", "--offline", "--config", str(config), "--format", "json", env=env
        )
    )
    assert repriced.returncode == 0, repriced.stderr
    report = json.loads(repriced.stdout)
    assert report["totals"]["requests"] == 1 and report["committed"] is False


@pytest.mark.slow
async def test_offline_commands_still_report_a_bad_ledger_table(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[ledger]\npath = 3\ncolour = 'red'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE")}
    result = await trio.to_thread.run_sync(lambda: tollgate("replay", "--verify", "--config", str(config), env=env))
    assert result.returncode == 2
    assert "ledger.path: expected a string" in result.stderr and "(colour)" in result.stderr
    missing = await trio.to_thread.run_sync(
        lambda: tollgate("replay", "--verify", "--config", str(tmp_path / "nope.toml"), env=env)
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr


async def chat(http: httpx.AsyncClient, count: int = 1) -> None:
    for _ in range(count):
        answer = await http.post("/v1/chat/completions", json={"model": "sim-1", "messages": PROMPT}, headers=DEMO)
        assert answer.status_code == 200, answer.text


async def test_admin_commands_print_no_http_client_log_lines() -> None:
    async with running_gateway(make_config()) as gw:
        listed = await trio.to_thread.run_sync(lambda: tollgate("tenants", "list", "--url", gw.url))
    assert listed.returncode == 0, listed.stderr
    assert "demo" in listed.stdout
    assert listed.stderr == "", "no 'httpx INFO HTTP Request: GET ...' line per call"


@pytest.mark.slow
async def test_spend_basis_chooses_as_recorded_or_restated() -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw, gw.http() as http:
        await chat(http, 2)
        doubled = {"sim/sim-1": {"input_per_mtok": "20", "output_per_mtok": "40"}}
        committed = await http.post("/admin/reprice", json={"prices": doubled, "commit": True}, headers=ADMIN)
        assert committed.json()["committed"] is True

        def spend(*args: str) -> subprocess.CompletedProcess[str]:
            return tollgate("spend", "--group-by", "tenant", "--url", gw.url, *args)

        recorded = await trio.to_thread.run_sync(lambda: spend("--basis", "as_recorded", "--format", "json"))
        restated = await trio.to_thread.run_sync(lambda: spend("--basis", "restated", "--json"))
        default = await trio.to_thread.run_sync(lambda: spend("--format", "json"))
        table = await trio.to_thread.run_sync(lambda: spend("--basis", "as_recorded"))
        bad = await trio.to_thread.run_sync(lambda: spend("--basis", "sometimes"))
    old, new = json.loads(recorded.stdout), json.loads(restated.stdout)
    assert (old["basis"], new["basis"], json.loads(default.stdout)["basis"]) == ("as_recorded", "restated", "restated")
    assert Decimal(new["totals"]["cost_usd"]) == 2 * Decimal(old["totals"]["cost_usd"]) > 0
    assert "TOTAL" in table.stdout and old["totals"]["cost_usd"] in table.stdout
    assert "basis: as_recorded" in table.stderr
    assert bad.returncode == 2 and "as_recorded" in bad.stderr


@pytest.mark.slow
async def test_providers_prints_each_providers_state() -> None:
    providers = [
        {"name": "sim", "kind": "simulator", "models": ["sim-1"]},
        {"name": "spare", "kind": "simulator", "models": ["sim-1"], "max_concurrency": 7},
    ]
    async with running_gateway(make_config(providers=providers)) as gw, gw.http() as http:
        await chat(http)
        table = await trio.to_thread.run_sync(lambda: tollgate("providers", "--url", gw.url))
        full = await trio.to_thread.run_sync(lambda: tollgate("providers", "--url", gw.url, "--json"))
        csv = (await trio.to_thread.run_sync(lambda: tollgate("providers", "--url", gw.url, "--format", "csv"))).stdout
        api = (await http.get("/admin/providers", headers=ADMIN)).json()
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "provider",
        "kind",
        "state",
        "breaker",
        "half_open_in_s",
        "in_flight",
        "max_concurrency",
        "waiting",
        "requests",
        "failures",
        "last_error",
    ]
    assert [row.split()[:4] for row in rows] == [
        ["sim", "simulator", "up", "closed"],
        ["spare", "simulator", "up", "closed"],
    ]
    assert csv.splitlines()[2].startswith("spare,simulator,up,closed,,0,7,0,0,0,")
    assert json.loads(full.stdout) == api, "--json prints the whole document"


async def test_events_table_has_fixed_columns_and_a_summary() -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw, gw.http() as http:
        await chat(http)
        table = await trio.to_thread.run_sync(lambda: tollgate("events", "--url", gw.url))
        full = await trio.to_thread.run_sync(lambda: tollgate("events", "--url", gw.url, "--format", "json"))
    assert table.returncode == 0, table.stderr
    document = json.loads(full.stdout)
    events = document["data"]
    assert {"position", "type", "timestamp", "aggregate_id", "data"} <= set(events[0]), "JSON stays full"
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["position", "time", "type", "tenant", "request_id", "summary"]
    assert len(rows) == len(events) and f"next: --after {document['next_after']}" in table.stderr
    admitted = next(e for e in events if e["type"] == "Request.Admitted")
    request_id = admitted["data"]["request_id"]
    completed = next(row for row in rows if "Request.Completed" in row)
    # the terminal event carries neither tenant nor request id: the table names them from the page
    assert completed.split()[3:5] == ["demo", request_id]
    assert "outcome=" in completed and "cost_usd=" in completed
    registered = next(row for row in rows if "Tenant.Registered" in row)
    assert registered.split()[3] == "demo"
    assert re.search(r"key_sha256=[0-9a-f]{8}… ", registered), "a hash is abbreviated"
    time = completed.split()[1]
    assert time.endswith("Z") and len(time) == len("2026-01-01T00:00:00.000Z")
    assert max(len(row) for row in rows) < 250, "one line per event, however many fields its type has"


async def test_events_by_ledger_id_shows_one_request_and_its_usage_source() -> None:
    async with running_gateway(make_config(pricing=PRICING)) as gw, gw.http() as http:
        await chat(http)
        answer = await http.post("/v1/chat/completions", json={"model": "sim-1", "messages": PROMPT}, headers=DEMO)
        ledger_id = answer.json()["x_gateway"]["ledger_id"]
        table = await trio.to_thread.run_sync(lambda: tollgate("events", "--url", gw.url, "--ledger-id", ledger_id))
    assert table.returncode == 0, table.stderr
    _, *rows = table.stdout.splitlines()
    assert [row.split()[2] for row in rows] == ["Request.Admitted", "Request.Completed"], "that request only"
    assert "usage_source=provider" in rows[1] or "usage_source=estimated" in rows[1], rows[1]
