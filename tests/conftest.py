"""Session fixtures: a throwaway PostgreSQL server (tests/postgres.py) started once, on demand."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres import PASSWORD, PASSWORD_ENV, PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()  # fails loudly when PostgreSQL cannot start: never a silent skip
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh empty database's URL; its password is in the environment variable `PASSWORD_ENV`."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    return postgres_server.database()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """Each ledger backend in turn: None for a SQLite file, else a fresh database's URL on the
    throwaway PostgreSQL (`tests.test_workers.ledger_lines` makes the `[ledger]` lines of either)."""
    return str(request.getfixturevalue("postgres_url")) if request.param == "postgres" else None
