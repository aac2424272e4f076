"""`handle_chat`: one chat completion request, from its key to its settlement — the use case.

authenticate → validate → admit (the tenant actor) → record `Admitted` → route and call (the router
returns the `Attempt` that answered) → settle → answer. A request refused before dispatch is recorded
as `Rejected`, with the status and reason the HTTP edge gives the refusal (`judge`: its error table,
walked once), and that verdict is returned. Every other ending is settled — by `RequestRecord.settle`,
the one place — before the error is raised. The caller turns the result into HTTP: an `Answered` body
or a `Streaming` relay, each with its headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Protocol, TypeVar

import attrs
import trio

from events.request import Request
from policies.errors import RequestRefused
from policies.routing import Deployment, RoutingIndex
from policies.validation import ChatRequest, parse_chat_request, parse_json
from runtime.actors.provider import ProviderHandle
from runtime.actors.tenant import TenantActors
from runtime.chat import router
from runtime.chat.exchange import Exchange
from runtime.chat.record import RequestRecord, estimate_usage, reject
from runtime.chat.relay import StreamRelay
from runtime.errors import ModelNotFound
from runtime.ledger.books import Books
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

    relay: StreamRelay
    headers: dict[str, str]


async def handle_chat(
    parts: ChatParts,
    exchange: Exchange,
    authorization: str | None,
    read_body: Callable[[], Awaitable[bytes | str]],
    judge: Callable[[RequestRefused | ModelNotFound], V],
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
        deployments = router.candidates(parts.routes, chat.model)
        with exchange.spanned(
            "tollgate.admission", {"tollgate.tenant": tenant.name, "gen_ai.request.model": chat.model}
        ):
            admission = await parts.tenants.admit(
                tenant, chat, deployments, parts.output_limit(chat.model, deployments), received_at
            )
    except (RequestRefused, ModelNotFound) as refusal:
        verdict = judge(refusal)
        asked = body if isinstance(body, dict) else {}
        model = asked.get("model") if isinstance(asked.get("model"), str) else None
        stream = asked.get("stream") is True
        await reject(
            parts.journal, exchange, tenant, model, stream, verdict.code, verdict.status, received_at, operation
        )
        return verdict
    if admission.output_cap is not None:  # a hard budget bounds what the provider may generate
        cap = admission.output_cap
        native = None if chat.native is None else {**chat.native, "max_tokens": cap}
        chat = attrs.evolve(chat, body={**chat.body, "max_tokens": cap}, max_tokens=cap, native=native)
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
    if chat.stream:
        attempt, upstream, opening = await router.open_stream(parts.providers, record, exchange)
        relayed = relay(attempt, upstream, opening, record, exchange)  # settles when the stream ends
        headers = {
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            "x-tollgate-overhead-ms": str(exchange.overhead_ms()),
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
    x_gateway = exchange.x_gateway(attempt.deployment, attempt.number, record.cost_str())
    answer["x_gateway"] = x_gateway
    headers = {"x-tollgate-overhead-ms": str(x_gateway["overhead_ms"])}
    return Answered(answer, headers, completion.native, corrected is not None)
