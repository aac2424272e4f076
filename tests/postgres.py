"""A throwaway PostgreSQL server for the tests and the bench: `initdb` + `pg_ctl` in a temp dir.

`PostgresServer.start()` makes a cluster in a fresh temp dir (owned by the `postgres` user when
running as root, since PostgreSQL refuses to run as root), listens on a free loopback port and on
a unix socket inside the temp dir, and sets a password for the `tollgate` role (md5/scram over TCP,
so the tests exercise `[ledger] password_env`). `database()` makes a fresh database per test.

It fails loudly when the binaries are missing or the server does not start: the tests never skip
PostgreSQL silently (`make test` installs the Debian `postgresql` package when it is missing).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

BIN = Path(os.environ.get("TOLLGATE_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "tollgate"
PASSWORD = "tollgate-test-password"
PASSWORD_ENV = "TOLLGATE_TEST_PG_PASSWORD"  # what the tests' configs name in `[ledger] password_env`


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tollgate-pg-"))
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def start(self) -> PostgresServer:
        if not (BIN / "initdb").exists():
            raise RuntimeError(f"PostgreSQL server binaries not found in {BIN}: apt-get install -y postgresql")
        self.socket_dir.mkdir()
        if self._as_postgres:
            shutil.chown(self.dir, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres")
        self._run(
            str(BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", "start")
        return self

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(
            str(BIN / "psql"), "-h", str(self.socket_dir), "-p", str(self.port), "-U", USER, "-d", database,
            "-v", "ON_ERROR_STOP=1", "-At", "-c", sql,
        ).stdout  # fmt: skip

    def database(self) -> str:
        """A fresh empty database; its URL (the password is `PASSWORD`, through `password_env`)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
