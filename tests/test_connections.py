"""Connections the HTTP server must end by itself, over real sockets (issue #11, items 11 and 12)."""

from __future__ import annotations

import contextlib
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
    from runtime.http.server import serve
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


async def answer_to(url: str, request: bytes) -> bytes:
    """Everything the server sends back to `request` until it closes the connection."""
    stream = await connect(url)
    with contextlib.suppress(trio.BrokenResourceError):  # the server may answer and close before reading it all
        await stream.send_all(request)
    answer = b""
    with trio.fail_after(5):
        try:
            while chunk := await stream.receive_some(65536):
                answer += chunk
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    return answer


def parsed(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    """Status line, headers (without `date`), body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    headers.pop("date", None)
    return status.strip(), headers, body


async def test_errors_hypercorn_answers_before_the_app_are_empty_and_close_the_connection() -> None:
    """Documented behaviour (README, "Errors"): Hypercorn answers a request it cannot parse itself,
    before the app (and its OpenAI error shape) is reached, with an empty body and closes."""
    async with running_gateway(make_config()) as gw:
        malformed = await answer_to(gw.url, b"GARBAGE\r\n\r\n")
        assert parsed(malformed) == ("HTTP/1.1 400", {"content-length": "0", "connection": "close"}, b"")
        huge = b"x" * (100 * 1024)
        too_big = await answer_to(gw.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + huge)
        assert parsed(too_big) == ("HTTP/1.1 431", {"content-length": "0", "connection": "close"}, b"")
        # just under Hypercorn's 16 KiB limit for a request head, the app answers in OpenAI's shape
        big = b"y" * (15 * 1024)
        app_answer = await answer_to(
            gw.url,
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer " + big + b"\r\n\r\n",
        )
        assert app_answer.startswith(b"HTTP/1.1 401") and b'"invalid_api_key"' in app_answer
