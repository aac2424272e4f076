"""Connections the HTTP server must end by itself, over real sockets (issue #11, items 11 and 12)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from runtime.auth import DEMO_KEY
from runtime.config import ConfigError, parse_config
from tests.harness import make_config, running_gateway

HEADER_TIMEOUT_S = 0.2


def server_section(**extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": 0, "grace_period_s": 2.0, **extra}


async def connect(url: str) -> trio.SocketStream:
    host, port = httpx.URL(url).host, httpx.URL(url).port
    assert port is not None
    return await trio.open_tcp_stream(host, port)


async def closed_by_server(stream: trio.SocketStream) -> bool:
    """True when the server ends the connection (EOF or reset) before we do."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass
    return True


async def test_a_connection_that_sends_nothing_is_closed_after_header_timeout_s() -> None:
    config = make_config(server=server_section(header_timeout_s=HEADER_TIMEOUT_S))
    async with running_gateway(config) as gw:
        stream = await connect(gw.url)
        with trio.fail_after(5):
            assert await closed_by_server(stream)
        await stream.aclose()


async def test_a_connection_dripping_header_lines_is_closed_after_header_timeout_s() -> None:
    config = make_config(server=server_section(header_timeout_s=HEADER_TIMEOUT_S))
    async with running_gateway(config) as gw:
        stream = await connect(gw.url)
        sent = 0

        async def drip() -> None:
            # One header line every 20 ms (pacing, not synchronisation): no read ever waits long,
            # so only a bound on the whole head can end this connection.
            nonlocal sent
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for index in range(1000):
                try:
                    await stream.send_all(b"X-Drip-%d: %s\r\n" % (index, b"y" * 10))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                sent += 1
                await trio.sleep(0.02)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drip)
                assert await closed_by_server(stream)
                nursery.cancel_scope.cancel()
        assert sent >= 3  # it was dripping for a while (well past 20 ms per line) before being cut
        await stream.aclose()


async def test_an_idle_keep_alive_connection_is_closed_after_header_timeout_s() -> None:
    config = make_config(server=server_section(header_timeout_s=HEADER_TIMEOUT_S))
    async with running_gateway(config) as gw:
        stream = await connect(gw.url)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        with trio.fail_after(5):
            while b'"ok"' not in answer:
                answer += await stream.receive_some(65536)
            assert answer.startswith(b"HTTP/1.1 200")
            assert await closed_by_server(stream)  # the timer restarts after each answer
        await stream.aclose()


async def test_a_prompt_client_on_a_kept_alive_connection_is_not_cut() -> None:
    config = make_config(server=server_section(header_timeout_s=5.0))
    async with running_gateway(config) as gw, httpx.AsyncClient(base_url=gw.url, timeout=5) as http:
        for _ in range(20):
            response = await http.get("/v1/models", headers={"Authorization": f"Bearer {DEMO_KEY}"})
            assert response.status_code == 200
        assert len(http._transport._pool.connections) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", [0, -1])
def test_header_timeout_s_must_be_positive(value: float) -> None:
    data = {"server": {"header_timeout_s": value}, "providers": [{"name": "sim", "kind": "simulator"}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, {})
    assert caught.value.problems == [f"server: 'header_timeout_s' must be > 0: {float(value)}"]


async def test_drain_closes_idle_keep_alive_connections_at_once() -> None:
    from runtime.gateway import open_gateway
    from runtime.server import serve
    from tests.harness import ADMIN_KEY

    config = make_config(server=server_section(grace_period_s=30.0, header_timeout_s=60.0))
    async with open_gateway(config, {"TOLLGATE_ADMIN_KEY": ADMIN_KEY}) as gateway:
        stopped = trio.Event()

        async def serve_then_mark(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
            await serve(gateway, task_status=task_status)
            stopped.set()

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve_then_mark)
            gateway.ready = True
            async with httpx.AsyncClient(base_url=binds[0], timeout=5) as http:
                response = await http.get("/v1/models", headers={"Authorization": f"Bearer {DEMO_KEY}"})
                assert response.status_code == 200  # its connection now sits idle in the pool
                gateway.begin_drain()
                with trio.fail_after(5):  # the grace period is 30 s: the idle connection must not hold it
                    await stopped.wait()
