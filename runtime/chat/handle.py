"""`handle_chat`: one chat completion request, from its key to its settlement — the use case.

authenticate → validate → admit (the tenant actor) → record `Admitted` → route and call (the router
returns the `Attempt` that answered) → settle → answer. A request refused before dispatch is recorded
as `Rejected`, with the status and reason the HTTP edge gives the refusal (`judge`: its error table,
walked once), and that verdict is returned. Every other ending is settled — by `RequestRecord.settle`,
the one place — before the error is raised. The caller turns the result into HTTP: an `Answered` body
or a `Streaming` relay, each with its headers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Protocol, TypeVar

import attrs
import trio

from events.money import usd_str
from events.request import Request
from policies import cache
from policies.errors import RequestRefused
from policies.routing import Deployment, RoutingIndex
from policies.validation import ChatRequest, parse_chat_request, parse_json
from runtime.actors.provider import ProviderHandle
from runtime.actors.tenant import TenantActors
from runtime.chat import router
from runtime.chat.cached import CachedAnswer, Replay, cacheable
from runtime.chat.exchange import Exchange
from runtime.chat.record import RequestRecord, estimate_usage, reject
from runtime.chat.relay import StreamRelay
from runtime.errors import ModelNotFound
from runtime.ledger.books import Books, TenantView
from runtime.ledger.cache import ResponseCache
from runtime.ledger.journal import Journal
from runtime.metrics import Metrics


class Verdict(Protocol):
    """What the HTTP edge makes of a refusal; the ledger records its status and reason code."""

    @property
    def status(self) -> int: ...

    @property
    def code(self) -> str: ...


V = TypeVar("V", bound=Verdict)


@attrs.frozen
class ChatParts:
    """What the chat use case works with (composed by the HTTP edge from the `Gateway`)."""

    books: Books  # keys → tenants; the price book
    tenants: TenantActors  # admission and its settlement
    journal: Journal
    providers: Mapping[str, ProviderHandle]  # each carrying its config
    routes: RoutingIndex
    output_limit: Callable[[str, tuple[Deployment, ...]], int]
    clock: Callable[[], datetime]  # wall time for money
    draining: trio.Event
    metrics: Metrics
    cache: ResponseCache | None = None  # the response cache (tenants opt in with their `cache` policy)


log = logging.getLogger("tollgate.chat")


@attrs.frozen
class Answered:
    """A complete answer: the OpenAI body (with `x_gateway`) and headers."""

    body: dict[str, Any]
    headers: dict[str, str]
    native: dict[str, Any] | None = None  # the provider's own answer to a `native` call (see `Call`)
    usage_corrected: bool = False  # `body["usage"]` is what was billed, not what the provider reported


@attrs.frozen
class Streaming:
    """A stream that has started: the relay to iterate (and close when the request ends) and headers."""

    relay: StreamRelay | Replay
    headers: dict[str, str]


async def handle_chat(
    parts: ChatParts,
    exchange: Exchange,
    authorization: str | None,
    read_body: Callable[[], Awaitable[bytes | str]],
    judge: Callable[[RequestRefused | ModelNotFound], V],
    cache_control: str | None = None,
    operation: str = "chat",
    parse: Callable[[Any], ChatRequest] = parse_chat_request,
    relay: type[StreamRelay] = StreamRelay,
) -> Answered | Streaming | V:
    """`operation` names the API the client called, for the ledger; `parse` reads its decoded body
    into a `ChatRequest` (another API's body translated to chat, its own kept as `native`); `relay`
    writes a stream in that API's format."""
    tenant = parts.books.authenticate(authorization)  # before the body is read: an unknown key gets its 401 first
    received_at = parts.clock()
    raw = await read_body()
    body: Any = None
    try:
        body = parse_json(raw)  # decoded once, also for recording what a refused request asked for
        chat = parse(body)
        deployments = router.candidates(parts.routes, chat.model, operation, parts.providers)
        with exchange.spanned(
            "tollgate.admission", {"tollgate.tenant": tenant.name, "gen_ai.request.model": chat.model}
        ):
            admission = await parts.tenants.admit(
                tenant,
                chat,
                deployments,
                parts.output_limit(chat.model, deployments),
                received_at,
                request=exchange.ledger_id,
            )
    except (RequestRefused, ModelNotFound) as refusal:
        verdict = judge(refusal)
        await reject(parts.journal, exchange, tenant, body, verdict.code, verdict.status, received_at, operation)
        return verdict
    if admission.output_cap is not None:  # a hard budget bounds what the provider may generate
        chat = chat.capped(admission.output_cap)
    plan = cache_plan(parts, tenant, operation, chat.model, chat.body, cache_control)
    hit = await lookup(parts, tenant, plan)
    record = RequestRecord(
        exchange,
        tenant,
        chat,
        received_at,
        admission,
        journal=parts.journal,
        prices=parts.books.prices,
        settle_reservation=parts.tenants.settle,
        draining=parts.draining,
        metrics=parts.metrics,
        operation=operation,
    )
    await record.open()
    exchange.quotas = admission.quotas
    if hit is not None:
        return await answer_from_cache(parts, record, exchange, hit)
    parts.metrics.cache_used(tenant.name, chat.model, None, plan.status, None)
    cache_header = {"x-tollgate-cache": plan.status}
    fill = cache_filler(parts, tenant, plan, record)
    if chat.stream:
        attempt, upstream, opening = await router.open_stream(parts.providers, record, exchange)
        relayed = relay(attempt, upstream, opening, record, exchange, fill)  # settles when the stream ends
        headers = {
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            "x-tollgate-overhead-ms": str(exchange.overhead_ms()),
            **cache_header,
        }
        return Streaming(relayed, headers)
    attempt, completion = await router.complete(parts.providers, record, exchange)
    try:
        delivered = router.content_bytes(completion)
        usage = completion.usage or estimate_usage(chat, delivered)
        await record.settle(Request.Completed, "ok", usage, delivered, served=attempt.deployment)
    except BaseException:  # the answer cannot be accounted for: still settled, once
        await record.settle(Request.Failed, "gateway_error", None, served=attempt.deployment)
        raise
    answer = completion.body
    if (corrected := record.corrected_usage) is not None:
        answer["usage"] = corrected.as_openai()
    if fill is not None:
        await fill(answer, attempt.deployment)
    x_gateway = exchange.x_gateway(attempt.deployment, attempt.number, record.cost_str())
    answer["x_gateway"] = x_gateway
    headers = {"x-tollgate-overhead-ms": str(x_gateway["overhead_ms"]), **cache_header}
    return Answered(answer, headers, completion.native, corrected is not None)


def cache_plan(
    parts: ChatParts, tenant: TenantView, operation: str, model: str, body: Mapping[str, Any], cache_control: str | None
) -> cache.CachePlan:
    """What this request does with the response cache (none at all without one). Only chat completions
    are cached: other APIs' answers (a Messages pass-through's native body) are not chat bodies."""
    if parts.cache is None or operation != "chat":
        return cache.BYPASS
    policy = tenant.tenant_policy
    return cache.plan(policy.cache, policy.cache_ttl_s, tenant.id, operation, model, body, cache_control)


async def lookup(parts: ChatParts, tenant: TenantView, plan: cache.CachePlan) -> CachedAnswer | None:
    """The cached answer for `plan`, if it says to look and one is stored; a store that fails is a miss."""
    if parts.cache is None or plan.key is None or not plan.read:
        return None
    try:
        found = await parts.cache.get(plan.key, tenant.id, parts.clock().timestamp())
        return None if found is None else CachedAnswer.decode(found)
    except Exception:  # the cache is an optimisation: never a reason to fail the request
        log.exception("response cache lookup failed; answering from the provider")
        return None


def cache_filler(
    parts: ChatParts, tenant: TenantView, plan: cache.CachePlan, record: RequestRecord
) -> Callable[[dict[str, Any], Deployment], Awaitable[None]] | None:
    """How a successful answer of this request is stored (None: it is not)."""
    store, key = parts.cache, plan.key
    if store is None or key is None or not plan.write:
        return None

    async def fill(completion: dict[str, Any], served: Deployment) -> None:
        usage = record.billed
        if usage is None or usage.source != "provider" or not cacheable(completion):
            return  # only complete answers whose usage the provider reported
        entry = CachedAnswer(completion, usage, served).encode()
        try:
            await store.put(key, tenant.id, entry, parts.clock().timestamp(), plan.ttl_s)
        except Exception:
            log.exception("response cache write failed; the answer is not cached")

    return fill


async def answer_from_cache(
    parts: ChatParts, record: RequestRecord, exchange: Exchange, hit: CachedAnswer
) -> Answered | Streaming:
    """Settle a hit (its own terminal event: $0 billed, the saving recorded) and answer with it."""
    saved = await record.serve_from_cache(hit.usage, hit.served)
    parts.metrics.cache_used(record.tenant.name, record.chat.model, hit.served.provider, "hit", saved.cost_usd)
    x_gateway = exchange.x_gateway(hit.served, 0, record.cost_str(), cache_hit=True)
    x_gateway["saved_usd"] = None if saved.cost_usd is None else usd_str(saved.cost_usd)
    headers = {"x-tollgate-overhead-ms": str(x_gateway["overhead_ms"]), "x-tollgate-cache": "hit"}
    if record.chat.stream:
        replay = Replay(hit.replay(record.chat.include_usage, x_gateway))
        return Streaming(replay, {"cache-control": "no-cache", "x-accel-buffering": "no", **headers})
    answer = hit.body()
    answer["x_gateway"] = x_gateway
    return Answered(answer, headers)
