"""The response cache's key, decisions and store, directly: tenant scoping, TTL, the byte bound, LRU."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from events.usage import Usage
from policies.cache import BYPASS, cache_directives, cache_key, is_deterministic, plan
from policies.routing import Deployment
from runtime.chat.cached import CachedAnswer, assemble, cacheable
from runtime.ledger.cache import CacheStore, ResponseCache

tenants = st.sampled_from(["A", "B", "a", "A ", '"A"', "A,B", "tenant-\u00e9"])
models = st.sampled_from(["m1", "m2", "A"])
operations = st.sampled_from(["chat", "messages"])
bodies = st.fixed_dictionaries(
    {"messages": st.lists(st.sampled_from(["hi", "hello", "A", "B"]), min_size=1, max_size=2)},
    optional={
        "temperature": st.sampled_from([0, 0.5, 1]),
        "seed": st.integers(0, 3),
        "user": st.sampled_from(["A", "B"]),
        "stream": st.booleans(),
    },
)
operation_lists = st.lists(
    st.tuples(st.sampled_from(["put", "get"]), tenants, operations, models, bodies), min_size=1, max_size=12
)


@settings(max_examples=500, deadline=None)
@given(operation_lists)
def test_no_tenant_ever_receives_an_entry_another_tenant_wrote(ops: list[tuple[Any, ...]]) -> None:
    store = CacheStore(":memory:", max_bytes=10_000)
    try:
        for number, (verb, tenant, operation, model, body) in enumerate(ops):
            key = cache_key(tenant, operation, model, body)
            if verb == "put":
                store.put(key, tenant, json.dumps([tenant, number]).encode(), now=number, ttl_s=1000)
            else:
                found = store.get(key, tenant, now=number)
                assert found is None or json.loads(found)[0] == tenant
                for other in ("A", "B"):  # the key alone never opens another tenant's entry either
                    stolen = store.get(key, other, now=number)
                    assert stolen is None or json.loads(stolen)[0] == other
    finally:
        store.close()


@settings(max_examples=200)
@given(tenants, tenants, operations, models, bodies)
def test_keys_of_different_tenants_never_collide(
    first: str, second: str, operation: str, model: str, body: Any
) -> None:
    assert (cache_key(first, operation, model, body) == cache_key(second, operation, model, body)) == (first == second)


def test_the_key_holds_what_changes_the_answer_and_not_how_it_is_delivered() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    key = cache_key("t", "chat", "m", body)
    assert cache_key("t", "chat", "m", {**body, "stream": True, "stream_options": {"include_usage": True}}) == key
    for change in ({"temperature": 1}, {"seed": 1}, {"max_tokens": 5}, {"n": 2}, {"tools": []}, {"user": "u"}):
        assert cache_key("t", "chat", "m", {**body, **change}) != key, change
    assert cache_key("t", "messages", "m", body) != key
    assert cache_key("t", "chat", "m2", body) != key
    assert cache_key("t", "chat", "m", dict(reversed(list(body.items())))) == key, "field order does not matter"


def test_the_determinism_filter() -> None:
    assert is_deterministic({"temperature": 0}) and is_deterministic({"temperature": 0.0})
    assert is_deterministic({"seed": 0}) and is_deterministic({"temperature": 1, "seed": 3})
    assert not is_deterministic({}) and not is_deterministic({"temperature": 0.2})
    assert not is_deterministic({"temperature": False}) and not is_deterministic({"seed": None})
    body = {"messages": []}
    assert plan("deterministic", 60, "t", "chat", "m", body, None) is BYPASS
    assert plan("deterministic", 60, "t", "chat", "m", {**body, "seed": 1}, None).status == "miss"
    assert plan("off", 60, "t", "chat", "m", {**body, "seed": 1}, None) is BYPASS
    assert plan("all", 60, "t", "chat", "m", body, None).status == "miss"


def test_cache_control_directives() -> None:
    assert cache_directives("No-Cache, max-age=0") == {"no-cache", "max-age"}
    body = {"messages": []}
    no_cache = plan("all", 60, "t", "chat", "m", body, "no-cache")
    assert (no_cache.read, no_cache.write, no_cache.status) == (False, True, "bypass")
    no_store = plan("all", 60, "t", "chat", "m", body, "no-store")
    assert (no_store.read, no_store.write, no_store.status) == (True, False, "miss")
    assert plan("all", 60, "t", "chat", "m", body, "no-cache, no-store") is BYPASS


def test_an_entry_expires_at_its_ttl() -> None:
    store = CacheStore(":memory:", max_bytes=1000)
    store.put("k", "t", b"answer", now=100.0, ttl_s=10)
    assert store.get("k", "t", now=109.999) == b"answer"
    assert store.get("k", "t", now=110.0) is None
    assert store.statistics().entries == 0, "an expired entry found is deleted"


def test_the_byte_bound_evicts_the_least_recently_used() -> None:
    store = CacheStore(":memory:", max_bytes=100)
    assert store.put("a", "t", b"a" * 40, now=1, ttl_s=60)
    assert store.put("b", "t", b"b" * 40, now=2, ttl_s=60)
    assert store.get("a", "t", now=3) is not None  # a is now the most recently used
    assert store.put("c", "t", b"c" * 40, now=4, ttl_s=60)
    assert store.get("b", "t", now=5) is None, "b was the least recently used"
    assert store.get("a", "t", now=5) is not None and store.get("c", "t", now=5) is not None
    assert store.statistics().bytes == 80
    assert not store.put("huge", "t", b"x" * 101, now=6, ttl_s=60), "larger than the bound: not stored"
    assert store.statistics().entries == 2, "and nothing evicted for it"
    assert store.put("a", "t", b"A" * 60, now=7, ttl_s=60), "a rewrite replaces the entry"
    assert store.get("a", "t", now=8) == b"A" * 60 and store.statistics().bytes == 100


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(1, 60)), min_size=1, max_size=30))
def test_the_store_never_exceeds_its_bound(writes: list[tuple[str, int]]) -> None:
    store = CacheStore(":memory:", max_bytes=100)
    for now, (key, size) in enumerate(writes):
        store.put(key, "t", b"x" * size, now=now, ttl_s=1000)
        assert store.statistics().bytes <= 100
        assert store.get(key, "t", now=now) == b"x" * size, "the newest write always fits"
    store.close()


async def test_the_trio_door_runs_in_a_thread_and_expires_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = ResponseCache(CacheStore(":memory:", max_bytes=1000))
    await cache.put("k", "t", b"answer", trio.current_time(), 30)
    await trio.sleep(29)  # virtual time: the autojump clock makes it instant
    assert await cache.get("k", "t", trio.current_time()) == b"answer"
    await trio.sleep(1)
    assert await cache.get("k", "t", trio.current_time()) is None
    cache.store.close()


COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop"},
        {
            "index": 1,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            "finish_reason": "tool_calls",
        },
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
}


def test_a_replayed_stream_assembles_back_into_the_answer() -> None:
    answer = CachedAnswer(COMPLETION, Usage(5, 3), Deployment("p", "m"))
    assert CachedAnswer.decode(answer.encode()) == answer
    stream = answer.replay(include_usage=True, x_gateway={"cache_hit": True}).decode()
    assert stream.endswith("data: [DONE]\n\n")
    chunks = [json.loads(part[6:]) for part in stream.split("\n\n") if part.startswith("data: {")]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == COMPLETION["usage"]
    assert chunks[-1]["x_gateway"] == {"cache_hit": True}
    assert assemble(chunks) == COMPLETION
    no_usage = answer.replay(include_usage=False, x_gateway={}).decode()
    assert '"usage"' not in no_usage


@pytest.mark.parametrize(
    ("choices", "expected"),
    [
        ([{"finish_reason": "stop"}], True),
        ([{"finish_reason": "length"}, {"finish_reason": "tool_calls"}], True),
        ([{"finish_reason": "error"}], False),
        ([{"finish_reason": None}], False),
        ([], False),
    ],
)
def test_only_answers_that_finished_are_cacheable(choices: list[dict[str, Any]], expected: bool) -> None:
    assert cacheable({"choices": choices}) is expected


def test_a_stream_with_a_delta_it_cannot_replay_is_not_assembled() -> None:
    chunks = [{"id": "x", "choices": [{"index": 0, "delta": {"audio": {"data": "..."}}}]}]
    assert assemble(chunks) is None
