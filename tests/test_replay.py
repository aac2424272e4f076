"""Projections are a pure function of the ledger: a rebuild from empty equals the live tables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.projections import Projections
from events.store import LedgerStore
from runtime.auth import DEMO_KEY, hash_key
from runtime.ledger.projector import projections_path
from runtime.ledger.replay import verify_open
from tests.fake_openai import Behaviour, fake_openai
from tests.harness import ADMIN, make_config, openai_provider, running_gateway

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}

operation = st.one_of(
    st.tuples(
        st.just("chat"), st.sampled_from(["sim-1", "gpt-test", "fast", "nope"]), st.booleans(), st.integers(1, 40)
    ),
    st.tuples(st.just("bad_request"), st.sampled_from([b"{", b"{}", b'{"model": "sim-1", "messages": 3}'])),
    st.tuples(st.just("tenant"), st.sampled_from(["a", "b", "c"]), st.integers(0, 100)),
    st.tuples(
        st.just("price"),
        st.sampled_from(["sim/sim-1", "up/gpt-test", "up/llama"]),
        st.integers(0, 50),
        st.sampled_from([None, "2020-01-01T00:00:00Z"]),
    ),
    st.tuples(st.just("rotate"), st.sampled_from(["a", "b", "c"])),
    st.tuples(st.just("upstream"), st.sampled_from([200, 500, 400])),
    st.tuples(st.just("reprice"), st.sampled_from(["ledger", "flat", "as_of"]), st.integers(0, 50), st.booleans()),
)


async def run_workload(http: httpx.AsyncClient, fake: Any, operations: list[tuple[Any, ...]]) -> None:
    for op in operations:
        kind = op[0]
        if kind == "chat":
            _, model, stream, max_tokens = op
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "x" * max_tokens}],
                "stream": stream,
                "max_tokens": max_tokens,
            }
            await http.post("/v1/chat/completions", json=body, headers=AUTH)
        elif kind == "bad_request":
            await http.post("/v1/chat/completions", content=op[1], headers=AUTH)
        elif kind == "tenant":
            _, name, rpm = op
            created = await http.post("/admin/tenants", json={"name": name, "rpm": rpm}, headers=ADMIN)
            if created.status_code == 409:
                await http.patch(f"/admin/tenants/{name}", json={"rpm": rpm}, headers=ADMIN)
        elif kind == "price":
            _, key, cents, effective = op
            body = {"prices": {key: {"input_per_mtok": str(cents), "output_per_mtok": str(cents * 2)}}}
            if effective:
                body["effective_from"] = effective
            await http.put("/admin/pricing", json=body, headers=ADMIN)
        elif kind == "rotate":
            await http.post(f"/admin/tenants/{op[1]}/rotate-key", json={"grace_period_s": 60}, headers=ADMIN)
        elif kind == "upstream":
            fake.behaviour = Behaviour(status=op[1])
        elif kind == "reprice":
            _, source, cents, commit = op
            prices = {"sim/sim-1": {"input_per_mtok": str(cents), "output_per_mtok": "3"}}
            reprice: dict[str, Any] = {"flat": {"prices": prices}, "ledger": {"ledger": True}}.get(
                source, {"as_of": "2030-01-01T00:00:00Z"}
            )
            response = await http.post("/admin/reprice", json={**reprice, "commit": commit}, headers=ADMIN)
            assert response.status_code == 200, response.text


@pytest.mark.slow
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(st.lists(operation, min_size=1, max_size=25))
async def test_replay_verify_is_clean_after_a_random_workload(
    tmp_path_factory: Any, operations: list[tuple[Any, ...]]
) -> None:
    ledger = str(tmp_path_factory.mktemp("ledger") / "ledger.sqlite3")
    async with fake_openai() as fake:
        config = make_config(
            providers=[
                {"name": "sim", "kind": "simulator", "models": ["sim-1"]},
                openai_provider(fake.url, models=("gpt-test",)),
            ],
            models={
                "fast": {"deployments": [{"provider": "up", "model": "llama"}, {"provider": "sim", "model": "sim-1"}]}
            },
            pricing={"sim/sim-1": {"input_per_mtok": "1", "output_per_mtok": "2"}},
            ledger={"path": ledger},
        )
        async with running_gateway(config) as gw, gw.http() as http:
            await run_workload(http, fake, operations)
            gateway = gw.gateway
            await gateway.projector.wait_for(gateway.journal.position)

            def check() -> list[str]:
                return verify_open(gateway.store, gateway.projector.projections)

            problems = await trio.to_thread.run_sync(check, limiter=gateway.projector._limiter)
    assert problems == []


def serve(config_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", "--config", str(config_path), "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("listening on "), line + (process.stderr.read() if process.stderr else "")
    return process, line.split()[-1]


def replay_verify(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`tollgate replay --verify` on a config's ledger, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "replay", "--verify", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.kill()
    process.wait(10)
    err = process.stderr.read() if process.stderr else ""
    for stream in (process.stdout, process.stderr):
        if stream:
            stream.close()
    return err


CONFIG = f"""
[server]
host = "127.0.0.1"
[ledger]
path = "LEDGER"
[[providers]]
name = "sim"
kind = "simulator"
models = ["sim-1"]
[pricing."sim/sim-1"]
input_per_mtok = "10"
output_per_mtok = "20"
[[tenants]]
name = "demo"
api_key_sha256 = "{hash_key(DEMO_KEY)}"
"""


@pytest.mark.slow
def test_sigkill_right_after_answering_keeps_the_answered_request(tmp_path: Path) -> None:
    ledger = tmp_path / "var" / "ledger.sqlite3"
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.replace("LEDGER", str(ledger)))
    env = {**os.environ, "TOLLGATE_ADMIN_KEY": "tga-kill"}
    admin = {"Authorization": "Bearer tga-kill"}
    process, url = serve(config, env)
    try:
        answers = [
            httpx.post(
                url + "/v1/chat/completions",
                json={"model": "sim-1", "messages": [{"role": "user", "content": f"n{i}"}]},
                headers={**AUTH, "X-Request-ID": f"kill-{i}"},
            )
            for i in range(5)
        ]
        assert all(a.status_code == 200 for a in answers)
        spend_before = httpx.get(url + "/admin/spend", headers=admin).json()["totals"]
        process.send_signal(signal.SIGKILL)
    finally:
        stop(process)
    process, url = serve(config, env)
    try:
        spend_after = httpx.get(url + "/admin/spend", headers=admin).json()["totals"]
        events = httpx.get(url + "/admin/events", params={"request_id": "kill-4"}, headers=admin).json()["data"]
    finally:
        stop(process)
    assert [e["type"] for e in events] == ["Request.Admitted", "Request.Completed"]
    assert events[1]["data"]["cost_usd"] == answers[4].json()["x_gateway"]["cost_usd"]
    assert spend_after == spend_before
    verified = replay_verify(config, env)
    assert verified.returncode == 0, verified.stderr
    assert "match" in verified.stdout


@pytest.mark.slow
def test_replay_verify_reports_a_tampered_projection(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.replace("LEDGER", str(ledger)))
    env = {**os.environ, "TOLLGATE_ADMIN_KEY": "tga-x"}
    process, url = serve(config, env)
    try:
        assert (
            httpx.post(
                url + "/v1/chat/completions",
                json={"model": "sim-1", "messages": [{"role": "user", "content": "x"}]},
                headers=AUTH,
            ).status_code
            == 200
        )
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    finally:
        stop(process)
    projections = Projections(projections_path(str(ledger)))
    projections.db.execute("update spend set cost_nanousd = 999")
    projections.db.conn.commit()
    projections.close()
    verified = replay_verify(config, env)
    assert verified.returncode == 1
    assert "spend" in verified.stderr and "999" in verified.stderr


@pytest.mark.slow
def test_missing_and_corrupt_ledgers_give_clear_errors(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"this is not a database at all" * 10)
    config.write_text(CONFIG.replace("LEDGER", str(corrupt)))
    env = {**os.environ, "TOLLGATE_ADMIN_KEY": "tga-x"}
    served = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "serve", "--config", str(config), "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert served.returncode == 2
    assert "is not a SQLite database" in served.stderr and "Traceback" not in served.stderr
    config.write_text(CONFIG.replace("LEDGER", str(tmp_path / "absent.sqlite3")))
    verified = replay_verify(config, env)
    assert verified.returncode == 2
    assert "no ledger at" in verified.stderr and "Traceback" not in verified.stderr
    LedgerStore(str(tmp_path / "new" / "dir" / "ledger.sqlite3")).close()  # a missing file for serving is created


def test_projections_of_another_layout_are_rebuilt_from_the_ledger(tmp_path: Path) -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    from events.request import Request
    from runtime.ledger.projector import catch_up

    store = LedgerStore(str(tmp_path / "ledger.sqlite3"))
    request = Request.admit("r", "t", "m", False, Decimal(0), datetime.now(UTC))
    request.settle(
        Request.Completed,
        provider="p",
        served_model="m",
        prompt_tokens=1,
        completion_tokens=2,
        cached_tokens=0,
        usage_source="provider",
        cost_usd=Decimal("0.25"),
        price_ref=None,
        latency_us=1,
        overhead_us=1,
        outcome="ok",
    )
    store.append([request])
    path = str(tmp_path / "ledger.projections.sqlite3")
    live = Projections(path)
    catch_up(store, live)
    live.db.execute("update tracking set position = 1 where name = 'schema'")
    live.db.conn.commit()
    live.close()
    reopened = Projections(path)
    assert reopened.position == 0 and reopened.rows("spend") == [], "an old layout is dropped"
    catch_up(store, reopened)
    assert [row["cost_nanousd"] for row in reopened.rows("spend")] == [250_000_000]
    reopened.close()
    store.close()


def test_folding_a_batch_asks_nothing_of_the_schema(tmp_path: Path) -> None:
    """The Projector's per-batch work is its own SQL: no `sqlite_master` lookup per batch (#14)."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from events.request import Request

    store = LedgerStore(str(tmp_path / "ledger.sqlite3"))
    for n in range(3):
        request = Request.admit(f"r{n}", "t", "m", False, Decimal(0), datetime.now(UTC))
        request.settle(
            Request.Completed,
            provider="p",
            served_model="m",
            prompt_tokens=1,
            completion_tokens=2,
            cached_tokens=0,
            usage_source="provider",
            cost_usd=Decimal("0.25"),
            price_ref=None,
            latency_us=1,
            overhead_us=1,
            outcome="ok",
        )
        store.append([request])
    live = Projections(str(tmp_path / "ledger.projections.sqlite3"))
    statements: list[str] = []
    live.db.conn.set_trace_callback(statements.append)
    for record in store.read(0, 100):
        live.apply([record])
    live.db.conn.set_trace_callback(None)
    assert live.position == store.position() and [r["requests"] for r in live.rows("spend")] == [3]
    assert statements and not [s for s in statements if "sqlite_master" in s or "pragma" in s.lower()]
    live.close()
    store.close()


async def test_replay_verify_reports_a_cost_changed_without_a_restatement(tmp_path: Path) -> None:
    """A restated cost passes; a spend row edited in SQL, or a settled cost edited in the log under a
    restatement, is reported as a cost changed without a restatement."""
    import sqlite3

    from runtime.ledger.replay import verify

    ledger = tmp_path / "ledger.sqlite3"
    pricing = {"sim/sim-1": {"input_per_mtok": "10", "output_per_mtok": "20"}}
    async with running_gateway(make_config(pricing=pricing, ledger={"path": str(ledger)})) as gw, gw.http() as http:
        for _ in range(2):
            answer = await http.post(
                "/v1/chat/completions",
                json={"model": "sim-1", "messages": [{"role": "user", "content": "x"}]},
                headers=AUTH,
            )
            assert answer.status_code == 200
        doubled = {"sim/sim-1": {"input_per_mtok": "20", "output_per_mtok": "40"}}
        committed = await http.post("/admin/reprice", json={"prices": doubled, "commit": True}, headers=ADMIN)
        assert committed.json()["committed"] is True
    assert await trio.to_thread.run_sync(verify, str(ledger)) == [], "restatements are how a cost changes"

    projections = Projections(projections_path(str(ledger)))
    projections.db.execute("update spend set cost_nanousd = cost_nanousd + 1000")
    projections.db.conn.commit()
    projections.close()
    config = tmp_path / "config.toml"
    config.write_text(f'[ledger]\npath = "{ledger}"\n')
    verified = await trio.to_thread.run_sync(lambda: replay_verify(config, dict(os.environ)))
    assert verified.returncode == 1
    assert "spend tenant=demo" in verified.stderr and "a cost changed without a restatement" in verified.stderr
    projections = Projections(projections_path(str(ledger)))
    projections.db.execute("update spend set cost_nanousd = cost_nanousd - 1000")
    projections.db.conn.commit()
    projections.close()
    assert await trio.to_thread.run_sync(verify, str(ledger)) == []

    with sqlite3.connect(ledger) as db:  # the log itself: a settled cost edited under its restatement
        changed = db.execute(
            "update stored_events set state = cast(json_set(state, '$.cost_usd._data_', '0.5') as blob)"
            " where rowid = (select min(rowid) from stored_events where topic like '%Request.Completed')"
        ).rowcount
    assert changed == 1
    problems = await trio.to_thread.run_sync(verify, str(ledger))
    assert any("restated from $" in p and "but its cost was $0.5" in p for p in problems), problems
