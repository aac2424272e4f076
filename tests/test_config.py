"""config.toml: every problem listed by path, never a traceback; the shipped file is valid."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from runtime.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent

BAD = """
[server]
port = "eighty"
colour = "blue"

[[providers]]
name = "sim"
kind = "simulator"
models = ["sim-1"]
[providers.simulator]
error_rate = 2

[[providers]]
name = "up"
kind = "openai"
base_url = "not a url"
models = ["m"]

[[providers]]
name = "sim"
kind = "teleporter"

[models."fast"]
deployments = [{ provider = "nowhere", model = "x" }]

[pricing."sim/sim-1"]
input_per_mtok = 0.5
output_per_mtok = "1.50"

[pricing."ghost/x"]
input_per_mtok = "1"
output_per_mtok = "1"

[[tenants]]
name = "demo"
"""


def problems_of(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    return caught.value.problems


def test_shipped_config_is_valid() -> None:
    config = load_config(ROOT / "config.toml", {})
    assert [p.name for p in config.providers] == ["sim"]
    assert config.pricing["sim/sim-1"].input_per_mtok == Decimal("0.5")
    assert config.tenants[0].name == "demo"


def test_type_errors_are_listed_by_path(tmp_path: Path) -> None:
    problems = problems_of(BAD, tmp_path)
    assert "server.port: expected an integer, got 'eighty'" in problems
    assert "server: extra fields found (colour)" in problems
    assert any(p.startswith("providers[0].simulator: 'error_rate' must be <= 1") for p in problems)
    assert "providers[2].kind: expected one of 'simulator', 'openai', 'anthropic'" in problems
    assert 'pricing."sim/sim-1".input_per_mtok: expected a decimal string such as "0.50", got 0.5' in problems


def test_semantic_errors_are_all_listed(tmp_path: Path) -> None:
    fixed_types = BAD.replace('port = "eighty"\ncolour = "blue"', "port = 80").replace(
        "error_rate = 2", "error_rate = 0.25"
    )
    fixed_types = fixed_types.replace('kind = "teleporter"', 'kind = "simulator"').replace("= 0.5\n", '= "0.5"\n')
    problems = problems_of(fixed_types, tmp_path)
    assert problems == [
        "providers[1].base_url: expected an http:// or https:// URL with a host",
        "providers[2].name: duplicate provider name 'sim'",
        "models.fast.deployments[0].provider: no provider named 'nowhere'",
        "pricing.\"ghost/x\": no provider named 'ghost'",
        "tenants[0]: set exactly one of api_key_sha256 and api_key_env",
    ]


def test_secrets_must_be_in_the_environment() -> None:
    data = {
        "providers": [{"name": "up", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "UP_KEY"}],
        "tenants": [{"name": "t", "api_key_env": "T_KEY"}],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data, {})
    assert caught.value.problems == [
        "providers[0].api_key_env: environment variable UP_KEY is not set",
        "tenants[0].api_key_env: environment variable T_KEY is not set",
    ]
    assert parse_config(data, {"UP_KEY": "k", "T_KEY": "t"}).providers[0].api_key_env == "UP_KEY"


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml", {})
    assert problems_of("[server\nport=1", tmp_path)[0].endswith(
        "not valid TOML (Expected ']' at the end of a table declaration (at line 1, column 8))"
    )


def test_check_config_cli_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "server.port: expected an integer" in result.stderr
    assert "providers[2].kind" in result.stderr
    good = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "check-config", "--config", str(ROOT / "config.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert good.returncode == 0 and "OK" in good.stdout


def test_timeouts_must_be_positive() -> None:
    data = {"providers": [{"name": "sim", "kind": "simulator", "timeouts": {"connect_s": -1}}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, {})
    assert caught.value.problems == ["providers[0].timeouts: 'connect_s' must be > 0: -1.0"]


def test_the_ledger_poll_interval_must_be_positive() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"ledger": {"poll_s": 0}}, {})
    assert caught.value.problems == ["ledger: 'poll_s' must be > 0: 0.0"]
    sim = {"name": "sim", "kind": "simulator", "models": ["sim-1"]}
    assert parse_config({"ledger": {"poll_s": 2}, "providers": [sim]}, {}).ledger.poll_s == 2
