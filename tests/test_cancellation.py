"""A client that leaves is recorded as `Cancelled`, wherever the gateway was waiting — proved over real sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import trio
import trio.testing

from events.request import Request
from runtime.auth import DEMO_KEY
from runtime.errors import is_cancellation
from tests.harness import ledger_events, make_config, openai_provider, request_events, running_gateway

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
PRICING = {"up/gpt-test": {"input_per_mtok": "1", "output_per_mtok": "2"}}
SYN_SENT = "02"


@contextmanager
def unreachable_upstream() -> Iterator[int]:
    """A port whose TCP connects never complete: a listener with backlog 0 whose one queue slot is
    taken by a connection nobody accepts, so the kernel drops every later SYN (the connect stays
    in SYN_SENT until its timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    try:
        yield port
    finally:
        filler.close()
        listener.close()


def connecting_to(port: int) -> bool:
    """Whether some socket on this machine is in SYN_SENT towards 127.0.0.1:`port`."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[2].endswith(f":{port:04X}") and fields[3] == SYN_SENT:
                return True
    return False


def test_is_cancellation_sees_through_exception_groups() -> None:
    cancelled = trio.Cancelled._create()  # type: ignore[attr-defined]
    assert is_cancellation(cancelled)
    assert is_cancellation(BaseExceptionGroup("connect", [cancelled]))
    assert is_cancellation(BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [cancelled]), OSError()]))
    assert not is_cancellation(ExceptionGroup("connect", [OSError()]))
    assert not is_cancellation(ValueError())


async def test_a_client_leaving_during_the_upstream_connect_is_recorded_cancelled() -> None:
    with unreachable_upstream() as port:
        url = f"http://127.0.0.1:{port}/v1"
        config = make_config(providers=[openai_provider(url, timeouts={"connect_s": 30})], pricing=PRICING)
        for stream in (False, True):
            async with running_gateway(config) as gw, gw.http() as http:
                async with trio.open_nursery() as nursery:

                    async def ask(stream: bool = stream) -> None:
                        body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
                        await http.post("/v1/chat/completions", json=body, headers={**AUTH, "X-Request-ID": "gone"})

                    nursery.start_soon(ask)
                    # Every task parked and the kernel shows the SYN in flight: the connect is in progress.
                    with trio.fail_after(5):
                        while not connecting_to(port):
                            await trio.testing.wait_all_tasks_blocked()
                    nursery.cancel_scope.cancel()  # the client hangs up while the connect is in progress
                with trio.fail_after(5):
                    while gw.gateway.http_in_flight:
                        await trio.testing.wait_all_tasks_blocked()
                events = await ledger_events(gw)
            assert request_events(events)["gone"] == ["Admitted", "Cancelled"], stream
            (cancelled,) = [e for e in events if isinstance(e, Request.Cancelled)]
            assert cancelled.outcome == "client_disconnected"
            assert cancelled.usage_source == "estimated"
