"""The fake upstream: OpenAI's shapes exactly, per-request steering, pacing; and the clients on it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.load import LoadGenerator
from bench.target import Target, start_upstream

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    target = start_upstream(tmp_path_factory.mktemp("upstream"))
    yield target
    target.server.stop()


def post(target: Target, body: dict[str, object], **headers: str) -> httpx.Response:
    return httpx.post(target.url, json=body, headers=headers, timeout=10)


def test_non_stream_is_a_chat_completion(upstream: Target) -> None:
    reply = post(upstream, {"model": "m1", "messages": [{"role": "user", "content": "hi [bench chunks=3]"}]})
    assert reply.status_code == 200
    data = reply.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "m1"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "w0 w1 w2 ", "refusal": None}
    assert data["choices"][0]["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3


def sse_events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    return [e.removeprefix("data: ") for e in events]


def test_stream_with_usage_is_openai_shaped(upstream: Target) -> None:
    body = {
        "model": "m1",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}],
    }
    reply = post(upstream, body, **{"x-bench-chunks": "4", "x-bench-interval-ms": "0"})
    assert reply.headers["content-type"] == "text/event-stream"
    events = sse_events(reply.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m1" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:5]] == ["w0 ", "w1 ", "w2 ", "w3 "]
    assert chunks[5]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_stream_without_usage_has_no_usage_chunk(upstream: Target) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "[bench chunks=2 interval_ms=0]"}]}
    chunks = [json.loads(e) for e in sse_events(post(upstream, body).text)[:-1]]
    assert len(chunks) == 4
    assert all("usage" not in c for c in chunks)


def test_stream_is_paced(upstream: Target) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "[bench chunks=6 interval_ms=20]"}]}
    start = time.perf_counter()
    post(upstream, body)
    assert 0.1 <= time.perf_counter() - start < 1.0


def test_stream_client_measures_paced_streams(upstream: Target) -> None:
    argv = [
        sys.executable,
        "-m",
        "bench.stream_client",
        "--url",
        upstream.url,
        "--mode",
        "concurrent",
        "--count",
        "5",
        "--chunks",
        "10",
        "--interval-ms",
        "10",
        "--ramp-s",
        "0.1",
    ]
    result = json.loads(subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=True).stdout)
    assert result["error_count"] == 0
    assert result["delay_ms"]["n"] == 50
    assert result["delay_ms"]["p99"] < 50


@pytest.mark.parametrize("name", ["python", "wrk"])
def test_load_generators(upstream: Target, name: str) -> None:
    if name == "wrk" and not shutil.which("wrk"):
        pytest.skip("wrk not installed")
    load = LoadGenerator.choose(name, install=False)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    result = load.run(upstream.url, "k", body, 4, 1)
    assert result.error_count == 0
    assert result.requests > 100
    assert 0 < result.p50_ms <= result.p99_ms
