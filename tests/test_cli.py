"""The `tollgate` command as users run it: a process, against ledger files or a running gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trio

from runtime.auth import DEMO_KEY
from tests.harness import ADMIN_KEY, make_config, running_gateway

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
