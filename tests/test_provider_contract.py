"""One contract, every adapter (STYLE §11): the simulator, OpenAI against `fake_openai` and Anthropic
against `fake_anthropic` must look the same to the gateway.

Each subject is opened for one `Fault` and hands back the adapter plus a way to wait until its
server holds no open stream (the simulator has no server, so it has nothing to wait for).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal

import attrs
import pytest
import trio

from providers.anthropic import AnthropicUpstream
from providers.errors import MalformedResponse, ProviderError, StreamBroken, UpstreamRejected
from providers.openai import OpenAIUpstream, decode_embeddings
from providers.simulator import Simulator, SimulatorSettings
from providers.upstream import CHAT, EMBEDDINGS, Call, Chunk, ChunkStream, Embedder, Timeouts, Upstream, capabilities
from tests import fake_anthropic, fake_openai

Fault = Literal["none", "server_error", "client_error", "broken_stream", "slow_stream"]
PROMPT = [{"role": "user", "content": "Say something about ledgers."}]
TIMEOUTS = Timeouts(connect_s=5, read_s=10)
CLOSE_DEADLINE_S = 5


@attrs.frozen
class Subject:
    upstream: Upstream
    models_max_tokens: bool
    wait_streams_closed: Callable[[], Awaitable[None]]


OpenSubject = Callable[[Fault], AbstractAsyncContextManager[Subject]]


async def nothing_to_wait_for() -> None:
    return None


@asynccontextmanager
async def simulator(fault: Fault) -> AsyncIterator[Subject]:
    settings = {
        "none": SimulatorSettings(),
        "server_error": SimulatorSettings(error_rate=1.0, error_status=503),
        "client_error": SimulatorSettings(error_rate=1.0, error_status=400),
        "broken_stream": SimulatorSettings(error_rate=1.0, fail_at="mid_stream"),
        "slow_stream": SimulatorSettings(),
    }[fault]
    upstream = Simulator("sim", settings)
    yield Subject(upstream, True, nothing_to_wait_for)
    await upstream.aclose()


@asynccontextmanager
async def openai(fault: Fault) -> AsyncIterator[Subject]:
    Behaviour = fake_openai.Behaviour
    behaviour = {
        "none": Behaviour(),
        "server_error": Behaviour(status=500),
        "client_error": Behaviour(status=400, error_body='{"error":{"message":"bad request","type":"invalid"}}'),
        "broken_stream": Behaviour(fault="reset_mid_stream"),
        "slow_stream": Behaviour(chunk_delay_s=60),
    }[fault]
    async with fake_openai.fake_openai(behaviour) as fake:

        async def wait_streams_closed() -> None:
            if fake.open_streams:
                await fake.streams_closed.wait()

        upstream = OpenAIUpstream("openai", fake.url, "sk-fake", TIMEOUTS, 4)
        yield Subject(upstream, False, wait_streams_closed)
        await upstream.aclose()


@asynccontextmanager
async def anthropic(fault: Fault) -> AsyncIterator[Subject]:
    Behaviour = fake_anthropic.Behaviour
    behaviour = {
        "none": Behaviour(),
        "server_error": Behaviour(status=529),
        "client_error": Behaviour(status=400, error_message="bad request"),
        "broken_stream": Behaviour(fault="reset_mid_body"),
        "slow_stream": Behaviour(chunk_delay_s=60),
    }[fault]
    async with fake_anthropic.fake_anthropic(behaviour) as fake:
        upstream = AnthropicUpstream("anthropic", fake.url, "sk-ant-fake", TIMEOUTS, 4)
        yield Subject(upstream, True, fake.wait_streams_closed)
        await upstream.aclose()


SUBJECTS: dict[str, OpenSubject] = {"simulator": simulator, "openai": openai, "anthropic": anthropic}


@pytest.fixture(params=list(SUBJECTS))
def open_subject(request: pytest.FixtureRequest) -> OpenSubject:
    return SUBJECTS[request.param]


def call(stream: bool, **extra: Any) -> Call:
    return Call({"model": "any", "messages": PROMPT, "stream": stream, **extra}, "model-x", stream)


async def read_all(stream: ChunkStream, chunks: list[Chunk] | None = None) -> list[Chunk]:
    chunks = [] if chunks is None else chunks
    while batch := await stream.next_batch():
        chunks.extend(batch)
    return chunks


async def consume(upstream: Upstream, stream: bool) -> object:
    if not stream:
        return await upstream.complete(call(False))
    opened = await upstream.open_stream(call(True))
    try:
        return await read_all(opened)
    finally:
        await opened.aclose()


def choices(chunks: list[Chunk]) -> list[dict[str, Any]]:
    return [choice for chunk in chunks for choice in chunk.data["choices"]]


async def test_complete_returns_a_chat_completion_with_text_and_usage(open_subject: OpenSubject) -> None:
    async with open_subject("none") as subject:
        completion = await subject.upstream.complete(call(False))
    body = completion.body
    assert body["object"] == "chat.completion"
    assert isinstance(body["id"], str) and isinstance(body["created"], int) and body["model"]
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = completion.usage
    assert usage is not None and usage.source == "provider"
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert body["usage"]["prompt_tokens"] == usage.prompt_tokens
    assert body["usage"]["completion_tokens"] == usage.completion_tokens
    assert body["usage"]["total_tokens"] == usage.total_tokens


async def test_stream_says_what_complete_says(open_subject: OpenSubject) -> None:
    async with open_subject("none") as subject:
        whole = await subject.upstream.complete(call(False))
        stream = await subject.upstream.open_stream(call(True))
        chunks = await read_all(stream)
        assert await stream.next_batch() == [], "a complete stream stays complete"
        await stream.aclose()
        await stream.aclose()
        with trio.fail_after(CLOSE_DEADLINE_S):
            await subject.wait_streams_closed()
    assert all(chunk.data["object"] == "chat.completion.chunk" for chunk in chunks)
    assert choices(chunks)[0]["delta"]["role"] == "assistant"
    text = "".join(choice["delta"].get("content") or "" for choice in choices(chunks))
    assert text == whole.body["choices"][0]["message"]["content"]
    assert sum(chunk.content_bytes for chunk in chunks) == len(text.encode())
    finishes = [choice["finish_reason"] for choice in choices(chunks) if choice["finish_reason"] is not None]
    assert finishes == ["stop"]
    [usage_chunk] = [chunk for chunk in chunks if chunk.usage is not None]
    assert usage_chunk.data["choices"] == []
    assert usage_chunk is chunks[-1]
    assert usage_chunk.usage == whole.usage


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_max_tokens_is_honoured_with_finish_length(open_subject: OpenSubject, stream: bool) -> None:
    async with open_subject("none") as subject:
        if not subject.models_max_tokens:
            pytest.skip("this adapter's fake does not model max_tokens")
        if stream:
            chunks = await read_all(await subject.upstream.open_stream(call(True, max_tokens=2)))
            finishes = [choice["finish_reason"] for choice in choices(chunks) if choice["finish_reason"]]
            usages = [chunk.usage for chunk in chunks if chunk.usage is not None]
        else:
            completion = await subject.upstream.complete(call(False, max_tokens=2))
            finishes = [completion.body["choices"][0]["finish_reason"]]
            usages = [completion.usage]
    assert finishes == ["length"]
    assert [usage.completion_tokens if usage else None for usage in usages] == [2]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_server_error_is_a_retryable_provider_error(open_subject: OpenSubject, stream: bool) -> None:
    async with open_subject("server_error") as subject:
        with pytest.raises(ProviderError) as caught:
            await consume(subject.upstream, stream)
    assert caught.value.retryable
    assert not isinstance(caught.value, UpstreamRejected)
    assert caught.value.status is not None and caught.value.status >= 500


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_client_error_is_rejected_and_not_retryable(open_subject: OpenSubject, stream: bool) -> None:
    async with open_subject("client_error") as subject:
        with pytest.raises(UpstreamRejected) as caught:
            await consume(subject.upstream, stream)
    assert not caught.value.retryable
    assert caught.value.status == 400


async def test_aclose_mid_stream_closes_the_upstream_stream(open_subject: OpenSubject) -> None:
    async with open_subject("slow_stream") as subject:
        stream = await subject.upstream.open_stream(call(True))
        first = await stream.next_batch()
        assert first and choices(first)[0]["delta"]["role"] == "assistant"
        await stream.aclose()
        with trio.fail_after(CLOSE_DEADLINE_S):
            await subject.wait_streams_closed()
        assert await stream.next_batch() == []
        await stream.aclose()


async def test_stream_dying_mid_body_is_stream_broken(open_subject: OpenSubject) -> None:
    async with open_subject("broken_stream") as subject:
        stream = await subject.upstream.open_stream(call(True))
        received: list[Chunk] = []
        with pytest.raises(StreamBroken) as caught:
            await read_all(stream, received)
        await stream.aclose()
        with trio.fail_after(CLOSE_DEADLINE_S):
            await subject.wait_streams_closed()
    assert caught.value.retryable
    assert any(chunk.content_bytes for chunk in received), "the stream broke after content had started"


# --- embeddings: every adapter that embeds, the same contract --------------------------------------------------------

EMBEDDERS = ("simulator", "openai")


def embed_call(**extra: Any) -> Call:
    return Call({"model": "any", "input": ["ledger", "tokens"], **extra}, "model-x", False)


@pytest.mark.parametrize("subject", EMBEDDERS)
@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_embed_returns_one_vector_per_input_and_usage(subject: str, encoding: str) -> None:
    async with SUBJECTS[subject]("none") as opened:
        upstream = opened.upstream
        assert EMBEDDINGS in capabilities(upstream) and isinstance(upstream, Embedder)
        answer = await upstream.embed(embed_call(encoding_format=encoding, dimensions=8))
    body = answer.body
    assert body["object"] == "list" and body["model"] == "model-x"
    assert [item["index"] for item in body["data"]] == [0, 1]
    for item in body["data"]:
        vector = item["embedding"]
        if encoding == "base64":
            assert isinstance(vector, str)
            vector = struct.unpack("<8f", base64.b64decode(vector))
        assert len(vector) == 8
    assert answer.usage is not None and answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens == 0
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] == answer.usage.prompt_tokens


@pytest.mark.parametrize("subject", EMBEDDERS)
@pytest.mark.parametrize(("fault", "retryable"), [("server_error", True), ("client_error", False)])
async def test_embed_failures_are_provider_errors(subject: str, fault: Fault, retryable: bool) -> None:
    async with SUBJECTS[subject](fault) as opened:
        assert isinstance(opened.upstream, Embedder)
        with pytest.raises(ProviderError) as failed:
            await opened.upstream.embed(embed_call())
    assert failed.value.retryable is retryable
    assert isinstance(failed.value, UpstreamRejected) is not retryable


async def test_anthropic_does_not_embed() -> None:
    async with anthropic("none") as opened:
        assert capabilities(opened.upstream) == {CHAT}
        assert not isinstance(opened.upstream, Embedder)


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"{nope", "not JSON"), (b'{"object": "list"}', "not a list of embeddings"), (b"[1]", "not a list")],
)
def test_an_embeddings_answer_that_is_not_one_is_malformed(content: bytes, why: str) -> None:
    with pytest.raises(MalformedResponse) as malformed:
        decode_embeddings("openai", content)
    assert why in malformed.value.message and malformed.value.retryable  # another provider may answer
