"""The contract of `providers.transport.TrioTransport`: what httpx's default transport does, on real
loopback sockets, against servers written here (`tests.transport_server`) and the OpenAI fake.

Most tests run twice (`make_transport`): on ours, and on httpx's default transport as the reference, so
"behaves like httpx" is checked, not claimed. Where they differ on purpose the test says so.

Timing that matters runs on a `MockClock` that jumps only once every task has been blocked for a
while (real I/O on loopback completes well before that); no test sleeps to synchronize.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Callable
from functools import partial

import h11
import httpx
import pytest
import trio
import trio.testing
import trustme

from providers.errors import MalformedResponse
from providers.openai import OpenAIUpstream
from providers.transport import TrioTransport
from providers.upstream import Call, Timeouts
from tests.fake_openai import fake_openai
from tests.transport_server import Exchange, serving

DEADLINE_S = 10  # every test: real seconds (or virtual, under the mock clock)


MakeTransport = Callable[..., httpx.AsyncBaseTransport]


@pytest.fixture(params=["trio", "httpx"])
def make_transport(request: pytest.FixtureRequest) -> MakeTransport:
    """Ours, and httpx's default transport as the reference: the same contract holds for both."""

    def httpx_default(
        max_connections: int = 100, keepalive_expiry_s: float = 5.0, ssl_context: ssl.SSLContext | None = None
    ) -> httpx.AsyncBaseTransport:
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry_s,
        )
        return httpx.AsyncHTTPTransport(verify=ssl_context or True, limits=limits)

    return TrioTransport if request.param == "trio" else httpx_default


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


def client(transport: httpx.AsyncBaseTransport, timeout: httpx.Timeout | float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, timeout=timeout)


# --- keep-alive and stale connections -----------------------------------------------------------


async def test_sequential_requests_share_one_connection(make_transport: MakeTransport) -> None:
    with trio.fail_after(DEADLINE_S):
        async with serving() as server, client(make_transport()) as http:
            for index in range(10):
                response = await http.post(server.url + "/x", content=b"n%d" % index)
                assert response.status_code == 200
                assert response.content == b"ok:n%d" % index
            assert server.connections == 1
            assert len(server.exchanges) == 10


async def test_an_idle_connection_the_upstream_closed_is_replaced_by_a_fresh_one(make_transport: MakeTransport) -> None:
    close_idle = trio.Event()

    async def answer_then_close_when_idle(exchange: Exchange) -> None:
        await exchange.respond(b"first")
        if len(exchange.body) == 1:  # the first request: its connection is closed once idle
            await close_idle.wait()
            exchange.hang_up()

    with trio.fail_after(DEADLINE_S):
        async with serving(answer_then_close_when_idle) as server, client(make_transport()) as http:
            assert (await http.post(server.url, content=b"1")).status_code == 200
            close_idle.set()
            await server.wait_until(lambda: server.ended == 1)
            response = await http.post(server.url, content=b"22")
            assert response.status_code == 200
            assert server.connections == 2
            assert [e.body for e in server.exchanges] == [b"1", b"22"]


async def test_a_request_that_was_sent_and_then_cut_is_an_error_and_not_retried(make_transport: MakeTransport) -> None:
    async def answer_first_cut_second(exchange: Exchange) -> None:
        if len(exchange.body) == 1:
            await exchange.respond()
        else:
            exchange.hang_up()  # read the whole request, then closed without a response byte

    with trio.fail_after(DEADLINE_S):
        async with serving(answer_first_cut_second) as server, client(make_transport()) as http:
            assert (await http.post(server.url, content=b"1")).status_code == 200
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await http.post(server.url, content=b"22")
            assert [e.body for e in server.exchanges] == [b"1", b"22"]  # exactly once
            assert server.connections == 1
            assert (await http.post(server.url, content=b"3")).status_code == 200  # the pool recovers


async def test_a_request_whose_first_send_fails_on_a_pooled_connection_is_sent_once_on_a_fresh_one() -> None:
    # The race the retry covers (a pooled connection found dead only by the first send) is induced
    # here: the pooled socket's sending side is shut, while the server keeps it open without reading.
    release = trio.Event()

    async def answer_then_hold(exchange: Exchange) -> None:
        await exchange.respond(b"ok:" + exchange.body)
        if exchange.body == b"1":
            await release.wait()

    with trio.fail_after(DEADLINE_S):
        transport = TrioTransport()
        async with serving(answer_then_hold) as server, client(transport) as http:
            assert (await http.post(server.url, content=b"1")).content == b"ok:1"
            (pooled,) = transport.pool(httpx.URL(server.url)).idle_connections()
            pooled.socket.shutdown(socket.SHUT_WR)
            assert pooled.quiet()  # the take-time check cannot see it
            assert (await http.post(server.url, content=b"2")).content == b"ok:2"
            assert [e.body for e in server.exchanges] == [b"1", b"2"]
            assert server.connections == 2
            release.set()


async def test_a_response_with_connection_close_is_not_pooled(make_transport: MakeTransport) -> None:
    async def answer_and_close(exchange: Exchange) -> None:
        await exchange.respond(b"bye", headers=[("connection", "close")])

    with trio.fail_after(DEADLINE_S):
        async with serving(answer_and_close) as server, client(make_transport()) as http:
            for _ in range(3):
                assert (await http.post(server.url, content=b"x")).content == b"bye"
            assert server.connections == 3


async def test_a_body_closed_before_its_end_closes_the_connection() -> None:
    with trio.fail_after(DEADLINE_S):
        transport = TrioTransport()
        async with serving() as server, client(transport) as http:
            async with http.stream("POST", server.url, content=b"x" * 10) as response:
                assert response.status_code == 200  # body never read
            await server.wait_until(lambda: server.ended == 1)
            assert (await http.post(server.url, content=b"y")).content == b"ok:y"
            assert server.connections == 2
            assert transport.pool(httpx.URL(server.url)).idle_count == 1


async def test_closing_the_transport_closes_a_connection_whose_body_is_still_open(
    make_transport: MakeTransport,
) -> None:
    # A reader that gives up on a body without closing it (an adapter after an error) must not leak the
    # socket past the transport: httpcore's pool closes in-use connections too, and so does ours.
    async def drip_forever(exchange: Exchange) -> None:
        await exchange.send(h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")]))
        await exchange.send(h11.Data(data=b"data: 1\n\n"))
        assert await exchange.stream.receive_some(1) == b""  # never ends the body; waits for the client's close

    with trio.fail_after(DEADLINE_S):
        async with serving(drip_forever) as server:
            http = client(make_transport())
            response = await http.send(http.build_request("POST", server.url, content=b"x"), stream=True)
            assert await response.aiter_raw().__anext__() == b"data: 1\n\n"
            await http.aclose()  # the response itself is never closed
            await server.wait_until(lambda: server.ended == 1)


async def test_a_connection_idle_longer_than_the_keepalive_expiry_is_not_reused(clock: trio.testing.MockClock) -> None:
    # ours only: httpcore times keep-alive with time.monotonic(), which the mock clock does not move
    with trio.fail_after(600):
        async with serving() as server, client(TrioTransport(keepalive_expiry_s=5.0)) as http:
            assert (await http.post(server.url, content=b"1")).status_code == 200
            clock.jump(4.0)
            assert (await http.post(server.url, content=b"2")).status_code == 200
            assert server.connections == 1
            clock.jump(6.0)
            assert (await http.post(server.url, content=b"3")).status_code == 200
            assert server.connections == 2
            await server.wait_until(lambda: server.ended == 1)  # the expired one was closed


async def test_bytes_after_a_response_are_never_read_as_the_next_response(make_transport: MakeTransport) -> None:
    async def answer_with_junk(exchange: Exchange) -> None:
        if exchange.body == b"1":
            smuggled = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled"
            body = b"first"
            head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body)
            await exchange.stream.send_all(head + body + smuggled)  # one send: one read at the client
        else:
            await exchange.respond(b"second")

    with trio.fail_after(DEADLINE_S):
        async with serving(answer_with_junk) as server, client(make_transport()) as http:
            assert (await http.post(server.url, content=b"1")).content == b"first"
            assert (await http.post(server.url, content=b"2")).content == b"second"
            assert server.connections == 2


# --- bodies ------------------------------------------------------------------------------------


async def chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


@pytest.mark.parametrize("chunked_response", [False, True])
@pytest.mark.parametrize("chunked_request", [False, True])
async def test_content_length_and_chunked_bodies_both_ways(
    make_transport: MakeTransport, chunked_request: bool, chunked_response: bool
) -> None:
    async def echo(exchange: Exchange) -> None:
        await exchange.respond(exchange.body, chunked=chunked_response)

    big = bytes(range(256)) * 1024  # 256 KiB: several sends and several reads
    with trio.fail_after(DEADLINE_S):
        async with serving(echo) as server, client(make_transport()) as http:
            for _ in range(2):  # and the connection is reusable after each framing
                content = chunks(big[:1000], b"", big[1000:]) if chunked_request else big
                response = await http.post(server.url, content=content)
                assert response.content == big
                assert response.headers.get("transfer-encoding") == ("chunked" if chunked_response else None)
            exchange = server.exchanges[0]
            assert exchange.header(b"transfer-encoding") == (b"chunked" if chunked_request else None)
            assert exchange.header(b"content-length") == (None if chunked_request else str(len(big)).encode())
            assert server.connections == 1


async def test_a_body_read_until_close(make_transport: MakeTransport) -> None:
    async def http10_style(exchange: Exchange) -> None:
        # neither content-length nor chunked: the body ends when the connection does
        await exchange.stream.send_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        exchange.hang_up()

    with trio.fail_after(DEADLINE_S):
        async with serving(http10_style) as server, client(make_transport()) as http:
            response = await http.post(server.url, content=b"x")
            assert response.content == b"all of it"
            assert (await http.post(server.url, content=b"x")).content == b"all of it"
            assert server.connections == 2


async def test_a_slow_drip_is_streamed_as_it_arrives(make_transport: MakeTransport) -> None:
    pieces = [b"data: %d\n\n" % i for i in range(5)]
    received = [trio.Event() for _ in pieces]

    async def drip(exchange: Exchange) -> None:
        await exchange.send(h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")]))
        for piece, seen in zip(pieces, received, strict=True):
            await exchange.send(h11.Data(data=piece))
            await seen.wait()  # the next piece only once the client has this one
        await exchange.send(h11.EndOfMessage())

    with trio.fail_after(DEADLINE_S):
        async with serving(drip) as server, client(make_transport()) as http:
            got = []
            async with http.stream("POST", server.url, content=b"go") as response:
                async for raw in response.aiter_raw():
                    got.append(raw)
                    received[len(got) - 1].set()
            assert got == pieces


async def test_body_pieces_read_together_come_out_as_one_piece() -> None:
    # Ours only (httpx's transport yields each chunk of a chunked body): every chunk already read goes
    # out in one piece, so a relay writes once per read; the body's end read with them releases the
    # connection, which the next request reuses.
    pieces = [b"data: %d\n\n" % i for i in range(3)]

    async def burst(exchange: Exchange) -> None:
        head = exchange.h11.send(h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")])) or b""
        body = b"".join(exchange.h11.send(h11.Data(data=piece)) or b"" for piece in pieces)
        await exchange.stream.send_all(head + body + (exchange.h11.send(h11.EndOfMessage()) or b""))

    with trio.fail_after(DEADLINE_S):
        async with serving(burst) as server, client(TrioTransport()) as http:
            for _ in range(2):
                async with http.stream("POST", server.url, content=b"go") as response:
                    assert [raw async for raw in response.aiter_raw()] == [b"".join(pieces)]
            assert server.connections == 1


async def test_a_bad_chunk_read_with_good_ones_fails_after_them() -> None:
    async def good_then_bad(exchange: Exchange) -> None:
        head = exchange.h11.send(h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")])) or b""
        await exchange.stream.send_all(head + (exchange.h11.send(h11.Data(data=b"data: 1\n\n")) or b"") + b"zz\r\n")
        assert await exchange.stream.receive_some(1) == b""  # until the client closes

    with trio.fail_after(DEADLINE_S):
        async with serving(good_then_bad) as server, client(TrioTransport()) as http:
            got: list[bytes] = []

            async def read_all() -> None:
                async with http.stream("POST", server.url, content=b"go") as response:
                    async for raw in response.aiter_raw():
                        got.append(raw)

            with pytest.raises(httpx.RemoteProtocolError):
                await read_all()
            assert got == [b"data: 1\n\n"]
            await server.wait_until(lambda: server.ended == 1)  # the broken connection was closed


# --- failures ----------------------------------------------------------------------------------


async def test_connection_refused_is_a_connect_error(make_transport: MakeTransport) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(DEADLINE_S):
        async with client(make_transport()) as http:
            with pytest.raises(httpx.ConnectError):
                await http.post(f"http://127.0.0.1:{port}/", content=b"x")


@pytest.mark.parametrize(("reset", "error"), [(True, httpx.ReadError), (False, httpx.RemoteProtocolError)])
async def test_a_connection_cut_mid_body(
    make_transport: MakeTransport, reset: bool, error: type[httpx.HTTPError]
) -> None:
    async def cut(exchange: Exchange) -> None:
        await exchange.send(h11.Response(status_code=200, headers=[("content-length", "1000")]))
        await exchange.send(h11.Data(data=b"x" * 10))
        exchange.hang_up(reset=reset)

    with trio.fail_after(DEADLINE_S):
        async with serving(cut) as server, client(make_transport()) as http:
            with pytest.raises(error):
                await http.post(server.url, content=b"x")
            assert server.connections == 1


async def test_oversized_response_headers_are_a_clear_error(make_transport: MakeTransport) -> None:
    async def huge_head(exchange: Exchange) -> None:
        await exchange.respond(headers=[("x-big", "a" * 200_000)])

    with trio.fail_after(DEADLINE_S):
        async with serving(huge_head) as server, client(make_transport()) as http:
            with pytest.raises(httpx.RemoteProtocolError) as raised:
                await http.post(server.url, content=b"x")
            if make_transport is TrioTransport:  # httpx's says only "Receive buffer too long"
                assert "response head (status line and headers) exceeds 102400 bytes" in str(raised.value)


async def test_connect_timeout(make_transport: MakeTransport, clock: trio.testing.MockClock) -> None:
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # the backlog is now full: further SYNs go unanswered
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        with trio.fail_after(600):
            async with client(make_transport(), httpx.Timeout(5.0, connect=7.0)) as http:
                start = trio.current_time()
                with pytest.raises(httpx.ConnectTimeout):
                    await http.post(url, content=b"x")
                assert trio.current_time() - start == pytest.approx(7.0, abs=0.5)


async def test_read_timeout(make_transport: MakeTransport, clock: trio.testing.MockClock) -> None:
    done = trio.Event()

    async def never_answer(exchange: Exchange) -> None:
        await done.wait()

    with trio.fail_after(600):
        async with serving(never_answer) as server, client(make_transport(), httpx.Timeout(5.0, read=30.0)) as http:
            start = trio.current_time()
            with pytest.raises(httpx.ReadTimeout):
                await http.post(server.url, content=b"x")
            assert trio.current_time() - start == pytest.approx(30.0, abs=0.5)
            done.set()


async def test_write_timeout(make_transport: MakeTransport, clock: trio.testing.MockClock) -> None:
    accepted = trio.Event()
    done = trio.Event()

    async def never_read(stream: trio.SocketStream) -> None:
        accepted.set()
        await done.wait()

    async with trio.open_nursery() as nursery:
        listener = trio.socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no autotuning: a tiny window
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, never_read, [trio.SocketListener(listener)])
        with trio.fail_after(600):
            async with client(make_transport(), httpx.Timeout(5.0, write=20.0)) as http:
                start = trio.current_time()
                with pytest.raises(httpx.WriteTimeout):
                    await http.post(f"http://127.0.0.1:{port}/", content=b"x" * (16 * 1024 * 1024))
                assert trio.current_time() - start == pytest.approx(20.0, abs=0.5)
                assert accepted.is_set()
        done.set()
        nursery.cancel_scope.cancel()


async def test_pool_timeout_and_max_connections(make_transport: MakeTransport, clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with serving() as server, client(make_transport(max_connections=1), httpx.Timeout(5.0, pool=9.0)) as http:
            async with http.stream("POST", server.url, content=b"held") as held:
                start = trio.current_time()
                with pytest.raises(httpx.PoolTimeout):
                    await http.post(server.url, content=b"waits")
                assert trio.current_time() - start == pytest.approx(9.0, abs=0.5)
                await held.aread()
            assert (await http.post(server.url, content=b"now")).content == b"ok:now"
            assert server.connections == 1


async def test_concurrent_requests_never_exceed_max_connections(make_transport: MakeTransport) -> None:
    gate = trio.Event()

    async def answer_when_opened(exchange: Exchange) -> None:
        await gate.wait()
        await exchange.respond()

    results: list[int] = []

    async def one(http: httpx.AsyncClient, url: str) -> None:
        results.append((await http.post(url, content=b"x")).status_code)

    with trio.fail_after(DEADLINE_S):
        async with serving(answer_when_opened) as server, client(make_transport(max_connections=3)) as http:
            async with trio.open_nursery() as nursery:
                for _ in range(12):
                    nursery.start_soon(one, http, server.url)
                await server.wait_until(lambda: len(server.exchanges) == 3)
                assert server.connections == 3
                gate.set()
            assert results == [200] * 12
            assert server.connections == 3
            assert server.most_open == 3


async def test_a_cancelled_request_closes_its_connection_and_frees_its_slot(make_transport: MakeTransport) -> None:
    release = trio.Event()

    async def hold_the_first(exchange: Exchange) -> None:
        if exchange.body == b"1":
            await release.wait()
        await exchange.respond()

    with trio.fail_after(DEADLINE_S):
        async with serving(hold_the_first) as server, client(make_transport(max_connections=1)) as http:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partial(http.post, server.url, content=b"1"))
                    await server.wait_until(lambda: len(server.exchanges) == 1)
                    scope.cancel()
            assert (await http.post(server.url, content=b"2")).status_code == 200
            assert server.connections == 2  # the cancelled one was not pooled
            release.set()


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, names: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    context.set_alpn_protocols(["http/1.1", "h2"])

    def record_sni(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        names.append(name or "")

    context.sni_callback = record_sni  # type: ignore[assignment]
    return context


async def test_tls_with_a_trusted_certificate(make_transport: MakeTransport, ca: trustme.CA) -> None:
    names: list[str] = []
    protocols: list[str | None] = []

    async def answer_alpn(exchange: Exchange) -> None:
        assert isinstance(exchange.stream, trio.SSLStream)
        protocols.append(exchange.stream.selected_alpn_protocol())
        await exchange.respond(b"secret")

    trusted = httpx.create_ssl_context()
    ca.configure_trust(trusted)
    with trio.fail_after(DEADLINE_S):
        async with serving(answer_alpn, server_context(ca, names)) as server:
            async with client(make_transport(ssl_context=trusted)) as http:
                for _ in range(3):
                    response = await http.post(f"https://localhost:{server.port}/", content=b"x")
                    assert response.content == b"secret"
            assert server.connections == 1
            assert names == ["localhost"]
            assert protocols == ["http/1.1"] * 3


async def test_tls_with_an_untrusted_certificate_is_refused(make_transport: MakeTransport, ca: trustme.CA) -> None:
    with trio.fail_after(DEADLINE_S):
        async with serving(ssl_context=server_context(ca, [])) as server, client(make_transport()) as http:
            with pytest.raises(httpx.ConnectError) as raised:
                await http.post(f"https://localhost:{server.port}/", content=b"x")
            if make_transport is TrioTransport:  # httpx's message is empty
                assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value)
            assert server.exchanges == []


# --- the OpenAI adapter over it ----------------------------------------------------------------


async def test_the_openai_adapter_over_the_transport() -> None:
    prompt = [{"role": "user", "content": "hi"}]
    with trio.fail_after(DEADLINE_S):
        async with fake_openai() as fake:
            upstream = OpenAIUpstream(
                "fake", fake.url, "sk-test", Timeouts(connect_s=5, read_s=10), 4, transport=TrioTransport(4)
            )
            try:
                completion = await upstream.complete(Call({"model": "m", "messages": prompt}, "gpt-x", False))
                assert completion.usage is not None and completion.usage.prompt_tokens == 11
                assert completion.body["choices"][0]["message"]["content"] == "Hello from the fake upstream."
                stream = await upstream.open_stream(
                    Call({"model": "m", "messages": prompt, "stream": True}, "gpt-x", True)
                )
                chunks = []
                for _ in range(50):
                    batch = await stream.next_batch()
                    if not batch:
                        break
                    chunks.extend(batch)
                await stream.aclose()
                assert "".join(c.data["choices"][0]["delta"].get("content", "") for c in chunks if c.data["choices"])
                assert chunks[-1].usage is not None
                await fake.wait_idle()
                assert fake.headers[0]["authorization"] == "Bearer sk-test"
                assert fake.bodies[1]["model"] == "gpt-x" and fake.bodies[1]["stream_options"] == {
                    "include_usage": True
                }
            finally:
                await upstream.aclose()


async def test_an_adapter_stream_that_fails_releases_its_connection_without_aclose() -> None:
    # A malformed event mid-stream: the stream's reader gets the error and may never call `aclose`
    # (a test, or a caller that only propagates); the connection must not stay taken until the client closes.
    async def malformed_mid_stream(exchange: Exchange) -> None:
        await exchange.send(h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")]))
        await exchange.send(h11.Data(data=b"data: {not json\n\n"))
        assert await exchange.stream.receive_some(1) == b""  # never ends the body; waits for the client's close

    with trio.fail_after(DEADLINE_S):
        async with serving(malformed_mid_stream) as server:
            transport = TrioTransport(1)
            upstream = OpenAIUpstream(
                "fake", server.url, None, Timeouts(connect_s=5, read_s=10), 1, transport=transport
            )
            try:
                stream = await upstream.open_stream(Call({"model": "m", "messages": []}, "gpt-x", True))
                with pytest.raises(MalformedResponse):
                    await stream.next_batch()
                await server.wait_until(lambda: server.ended == 1)
                assert transport.pool(httpx.URL(server.url)).idle_count == 0
            finally:
                await upstream.aclose()
