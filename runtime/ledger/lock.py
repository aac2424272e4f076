"""One serving process per SQLite ledger: an OS file lock held for the process's life.

Two `tollgate serve` on one ledger would each keep their own Books, budgets and breakers and then
disagree (a tenant created on one is unknown to the other) until several processes follow one log
(DESIGN §5). So `serve` takes `fcntl.flock(LOCK_EX | LOCK_NB)` on `<ledger>.lock` next to the ledger
and keeps the descriptor open until it exits; the kernel drops the lock when the process ends,
even on `kill -9`, so a crash never leaves a stale lock behind. The file holds the owner's pid, for
the message the second process prints. `:memory:` ledgers belong to one process and need none;
PostgreSQL ledgers take none either (its server serialises appends).

Offline commands that only read (`replay --verify`, `reprice --offline`, a dry run) do not take it:
they never write the ledger, and an operator may want to check a live gateway.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from events.store import MEMORY, is_postgres


class LedgerBusy(Exception):
    """Another process holds the ledger's lock (or the lock file cannot be made)."""


def lock_path(ledger_path: str) -> Path:
    path = Path(ledger_path)
    return path.with_name(path.name + ".lock")


@contextmanager
def ledger_lock(ledger_path: str) -> Iterator[None]:
    """Hold the ledger's lock for the `with` block; raise `LedgerBusy` at once if it is taken."""
    if ledger_path == MEMORY or is_postgres(ledger_path):
        yield
        return
    path = lock_path(ledger_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise LedgerBusy(f"cannot create the ledger lock {path}: {error.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise LedgerBusy(
                f"the ledger {ledger_path} is in use by another tollgate serve"
                f"{f' (pid {owner})' if owner.isdigit() else ''}; stop it first or use another [ledger].path"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
