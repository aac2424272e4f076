"""Restart crashed actors, within a restart-intensity limit (Erlang's habit, trio's nurseries).

`supervise` runs one actor incarnation after another in the calling task. An incarnation that
returns has stopped on purpose; one that raises is restarted, unless more than `max_restarts`
crashes fell within `window_s`, in which case `give_up` is called and supervision ends.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import attrs
import trio

log = logging.getLogger("tollgate.supervisor")
T = TypeVar("T")


@attrs.frozen
class RestartPolicy:
    max_restarts: int = 5
    window_s: float = 60.0


class _FirstStart(Generic[T]):
    """Forwards the first `started()` of any incarnation to the supervisor's own starter."""

    def __init__(self, status: trio.TaskStatus[T]) -> None:
        self._status: trio.TaskStatus[T] | None = status

    def started(self, value: Any = None) -> None:
        if self._status is not None:
            status, self._status = self._status, None
            status.started(value)


async def supervise(
    name: str,
    incarnation: Callable[[trio.TaskStatus[T]], Awaitable[None]],
    give_up: Callable[[BaseException], None],
    policy: RestartPolicy = RestartPolicy(),
    *,
    task_status: trio.TaskStatus[T] = trio.TASK_STATUS_IGNORED,
) -> None:
    starter: _FirstStart[T] = _FirstStart(task_status)
    crashes: deque[float] = deque()
    while True:
        try:
            await incarnation(starter)  # type: ignore[arg-type]
            return
        except Exception as error:
            now = trio.current_time()
            crashes.append(now)
            while crashes and crashes[0] < now - policy.window_s:
                crashes.popleft()
            if len(crashes) > policy.max_restarts:
                log.error(
                    "actor %s crashed %d times in %.0fs; giving up", name, len(crashes), policy.window_s, exc_info=error
                )
                give_up(error)
                starter.started(None)
                return
            log.warning("actor %s crashed; restarting (%d in window)", name, len(crashes), exc_info=error)
