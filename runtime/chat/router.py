"""Route one chat request: candidates in order, a lease at each provider, the call, the fallback.

Retryable provider failures move on to the next candidate; a non-retryable one (the request
itself is wrong) goes straight back to the client. Every attempt's outcome is reported to its
ProviderActor when its lease is released, and every failed attempt becomes an `AttemptFailed`
event. The attempt that answered comes back as an `Attempt` value (who, when, the lease). A request
no attempt answered is settled here, where the attempt in flight is known; an answered one by
`handle_chat` (a completion) or its relay (a stream).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

import attrs
import trio
from opentelemetry.trace import StatusCode

from events.request import Request
from policies.errors import InvalidRequest
from policies.routing import Deployment, RoutingIndex
from providers.errors import ProviderError, UpstreamRateLimited, UpstreamTimeout, describe
from providers.upstream import (
    CHAT,
    EMBEDDINGS,
    Call,
    Chunk,
    ChunkStream,
    Completion,
    Embedder,
    Timeouts,
    Upstream,
    capabilities,
)
from runtime.actors.provider import CANCELLED, SUCCESS, Lease, Outcome, ProviderHandle
from runtime.chat.exchange import Exchange
from runtime.chat.record import RequestRecord, estimate_usage
from runtime.errors import (
    ActorUnavailable,
    ModelNotFound,
    ProviderRefused,
    ProviderUnavailable,
    UpstreamFailed,
    UpstreamsRateLimited,
    is_cancellation,
)

T = TypeVar("T")
log = logging.getLogger("tollgate.router")
CLOSE_DEADLINE_S = 5.0


@attrs.frozen
class Attempt:
    """The attempt that answered: where (`deployment`), its number among the request's attempts,
    when it began (trio time: a stream's total deadline counts from there), and its lease."""

    deployment: Deployment
    number: int
    started: float
    lease: Lease

    @property
    def timeouts(self) -> Timeouts:
        return self.lease.handle.config.timeouts


def candidates(
    routes: RoutingIndex,
    model: str,
    operation: str = CHAT,
    providers: Mapping[str, ProviderHandle] | None = None,
) -> tuple[Deployment, ...]:
    """The deployments serving `model`; for embeddings, only those whose provider can embed (an
    unknown model is a 404 `model_not_found`; a model none of whose providers embeds, a 400
    `model_not_embeddings`)."""
    found = routes.lookup(model)
    if not found:
        raise ModelNotFound(f"The model '{model}' does not exist or is not served by this gateway.")
    if operation != EMBEDDINGS:
        return found
    assert providers is not None
    able = tuple(d for d in found if EMBEDDINGS in capabilities(providers[d.provider].upstream))
    if not able:
        raise InvalidRequest(
            f"The model '{model}' is not an embeddings model: none of its providers "
            f"({', '.join(dict.fromkeys(d.provider for d in found))}) can embed.",
            param="model",
            code="model_not_embeddings",
        )
    return able


_jitter = random.Random()


@contextmanager
def upstream_deadline(provider: str, seconds: float | None, what: str) -> Iterator[None]:
    """Bound a wait on a provider; passing the deadline is an `UpstreamTimeout` (retryable)."""
    if seconds is None:
        yield
        return
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise UpstreamTimeout(provider, f"provider {provider!r}: no {what} within {seconds:g}s") from None


def backoff(attempt: int, base_s: float, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, or the provider's own Retry-After when it sent one."""
    if retry_after is not None:
        return retry_after
    return _jitter.uniform(0, base_s * 2**attempt)


MAX_RETRY_AFTER_S = 60.0
"""The longest `Retry-After` a client is given for upstream rate limits: a provider asking for longer
(or for something absurd) is passed on as 60 s — coming back then lets the gateway try again."""


def attempt_failed(
    record: RequestRecord, exchange: Exchange, deployment: Deployment, number: int, error: ProviderError
) -> None:
    """Record a failed attempt on the request's aggregate and log it at WARNING (the operator's view)."""
    record.attempt_failed(deployment, error)
    log.warning(
        "request %s (ledger %s): attempt %d at provider %r (%s) failed: %s (%s)",
        exchange.request_id,
        exchange.ledger_id,
        number,
        deployment.provider,
        deployment.model,
        error.kind,
        describe(error),
    )


def _refusal(retry_at: float | None, now: float) -> str:
    if retry_at is None:
        return "half-open, a probe request is in flight"
    return f"circuit open, retry in {max(1, math.ceil(retry_at - now))}s"


async def _first_success(
    providers: Mapping[str, ProviderHandle],
    record: RequestRecord,
    exchange: Exchange,
    start: Callable[[Upstream, Call, Timeouts], Awaitable[T]],
) -> tuple[Attempt, T]:
    """Try each candidate in order, each up to 1 + max_retries times, until one answers. A request
    none answered is settled here, at the attempt in flight (a client that leaves now is billed
    there) or the last one tried."""
    tried: list[Deployment] = []
    try:
        return await _try_candidates(providers, record, exchange, start, tried)
    except BaseException as error:
        await settle_failure(record, error, tried[-1] if tried else None)
        raise


async def _try_candidates(
    providers: Mapping[str, ProviderHandle],
    record: RequestRecord,
    exchange: Exchange,
    start: Callable[[Upstream, Call, Timeouts], Awaitable[T]],
    tried: list[Deployment],
) -> tuple[Attempt, T]:
    chat = record.chat
    errors: list[tuple[str, ProviderError]] = []  # every failed attempt, in order
    skipped: list[tuple[str, str]] = []  # candidates no attempt was made at, and why
    open_until: list[float | None] = []
    for deployment in record.admission.candidates:
        handle = providers[deployment.provider]
        settings = handle.config
        waited = 0.0
        for retry in range(settings.max_retries + 1):
            try:
                lease = await handle.lease()
            except ActorUnavailable:
                if retry == 0:  # after an attempt, what that attempt met says more
                    skipped.append((deployment.provider, "down"))
                break
            except ProviderRefused as refused:
                if retry == 0:
                    open_until.append(refused.retry_at)
                    skipped.append((deployment.provider, _refusal(refused.retry_at, trio.current_time())))
                break
            tried.append(deployment)
            attempt = Attempt(deployment, len(tried), trio.current_time(), lease)
            call = Call(
                chat.body, deployment.model, chat.stream, exchange.upstream_headers(), chat.native, chat.native_api
            )
            operation = EMBEDDINGS if record.operation == EMBEDDINGS else CHAT
            span = exchange.child(
                f"{operation} {chat.model}",
                {
                    "gen_ai.operation.name": operation,
                    "gen_ai.provider.name": deployment.provider,
                    "gen_ai.request.model": chat.model,
                    "gen_ai.response.model": deployment.model,
                    "tollgate.attempt": attempt.number,
                    "tollgate.tenant": record.tenant.name,
                },
            )
            try:
                with exchange.waiting_upstream():
                    result = await start(handle.upstream, call, settings.timeouts)
            except ProviderError as error:
                span.set_attribute("tollgate.outcome", error.kind)
                span.set_status(StatusCode.ERROR, error.kind)
                span.end()
                await lease.release(Outcome.failed(error))
                attempt_failed(record, exchange, deployment, attempt.number, error)
                if not error.retryable:
                    raise
                errors.append((deployment.provider, error))
                if retry == settings.max_retries:
                    break
                delay = backoff(retry, settings.retry_backoff_s, error.retry_after)
                if waited + delay > settings.max_retry_wait_s:
                    break  # waiting that long here is worse than the next candidate
                waited += delay
                await trio.sleep(delay)
                continue
            except BaseException:
                span.set_attribute("tollgate.outcome", "cancelled")
                span.end()
                await lease.release(CANCELLED)
                raise
            exchange.serving = span  # ended at settlement, with the usage and cost
            return attempt, result
    if not errors:
        if open_until:
            now = trio.current_time()
            known = [at for at in open_until if at is not None]
            wait = max(min(known) - now, 0.0) if known else 1.0
            if not known:
                state = "half-open, a probe request is in flight"
            elif len(known) == len(open_until):
                state = "circuit open"
            else:
                state = "circuits open or half-open with a probe in flight"
            raise ProviderUnavailable(
                f"Every provider for '{chat.model}' is refusing work right now ({state}); "
                f"retry in {max(1, math.ceil(wait))}s.",
                retry_after=wait,
            )
        down = ", ".join(dict.fromkeys(provider for provider, _ in skipped))
        raise ProviderUnavailable(f"No provider can serve '{chat.model}' right now (down: {down}).", retry_after=1.0)
    failures = [(provider, describe(error)) for provider, error in errors] + skipped
    if not skipped and all(isinstance(error, UpstreamRateLimited) for _, error in errors):
        asked = [error.retry_after for _, error in errors if error.retry_after is not None]
        raise UpstreamsRateLimited(chat.model, failures, retry_after=min(max(asked, default=1.0), MAX_RETRY_AFTER_S))
    raise UpstreamFailed(failures)


async def settle_failure(record: RequestRecord, error: BaseException, last: Deployment | None) -> None:
    """Settle a request that ended before any answer reached the client; `last` is the deployment of
    the attempt in flight or the last one tried (None: no attempt was made)."""
    if isinstance(error, ProviderError) and not error.retryable:
        await record.settle(Request.Failed, "upstream_rejected", None, served=last)
    elif isinstance(error, ProviderError | UpstreamFailed | ProviderUnavailable):
        await record.settle(Request.Failed, "upstream_error", None, served=last)
    elif is_cancellation(error):
        # The provider read the prompt even if nothing came back yet: record its estimate.
        await record.settle(Request.Cancelled, "client_disconnected", estimate_usage(record.chat, 0), served=last)
    else:
        await record.settle(Request.Failed, "gateway_error", None, served=last)


async def complete(
    providers: Mapping[str, ProviderHandle], record: RequestRecord, exchange: Exchange
) -> tuple[Attempt, Completion]:
    """The first complete answer (an embeddings request's: its embeddings), and the attempt that
    gave it (its lease released)."""

    embeddings = record.operation == EMBEDDINGS

    async def call_upstream(upstream: Upstream, call: Call, timeouts: Timeouts) -> Completion:
        with upstream_deadline(upstream.name, timeouts.total_s, "complete answer"):
            if embeddings:
                assert isinstance(upstream, Embedder)  # `candidates` kept only providers that embed
                return await upstream.embed(call)
            return await upstream.complete(call)

    attempt, completion = await _first_success(providers, record, exchange, call_upstream)
    await attempt.lease.release(SUCCESS)
    return attempt, completion


def content_bytes(completion: Completion) -> int:
    """The bytes of content a complete answer delivers (what an estimate of its output counts)."""
    size = 0
    for choice in completion.body.get("choices") or ():
        content = (choice.get("message") or {}).get("content")
        if isinstance(content, str):
            size += len(content.encode(errors="surrogatepass"))  # JSON may carry a lone surrogate
    return size


async def close_quietly(stream: ChunkStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_DEADLINE_S):
        await stream.aclose()


async def _open_until_content(upstream: Upstream, call: Call, timeouts: Timeouts) -> tuple[ChunkStream, list[Chunk]]:
    """Open a stream and buffer its opening events until the first content (or its end), so a
    failure before any content reaches the client can still fall back."""
    limit = min(timeouts.first_token_s, timeouts.total_s or math.inf)
    with upstream_deadline(upstream.name, limit, "first token"):
        stream = await upstream.open_stream(call)
        opening: list[Chunk] = []
        try:
            while True:
                batch = await stream.next_batch()
                opening.extend(batch)
                if not batch or any(chunk.has_content for chunk in batch):
                    return stream, opening
        except BaseException:
            await close_quietly(stream)
            raise


async def open_stream(
    providers: Mapping[str, ProviderHandle], record: RequestRecord, exchange: Exchange
) -> tuple[Attempt, ChunkStream, list[Chunk]]:
    """A stream that has started (its opening events, up to the first content), and the attempt that
    opened it; its lease is the relay's to release."""
    attempt, (stream, opening) = await _first_success(providers, record, exchange, _open_until_content)
    return attempt, stream, opening
