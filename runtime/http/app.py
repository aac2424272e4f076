"""The HTTP API: a Quart-Trio app speaking OpenAI's API, plus health and admin endpoints.

`ERRORS` is the one table mapping every error tree (policies, providers, runtime) to an HTTP
status and OpenAI error `type`/`code`; every error body is `{"error": {message, type, param, code}}`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from policies.embeddings import parse_embeddings_request
from policies.errors import (
    BudgetExceeded,
    CostUnbounded,
    InvalidRequest,
    ModelNotAllowed,
    ModelUnpriced,
    RateLimited,
    RequestRefused,
    TenantDisabled,
)
from providers.errors import ProviderError
from runtime.chat.exchange import Exchange
from runtime.chat.handle import Answered, ChatParts, Streaming, handle_chat
from runtime.chat.responses import PreviousResponseNotFound, StreamingResponse, handle_responses
from runtime.errors import (
    ActorUnavailable,
    Conflict,
    GatewayError,
    ModelNotFound,
    NotFound,
    Overloaded,
    ProviderUnavailable,
    Unauthenticated,
    UpstreamFailed,
    UpstreamsRateLimited,
)
from runtime.gateway import Gateway
from runtime.http import admin_series, dashboard
from runtime.http.admin import register_admin
from runtime.http.messages import CLOSERS, anthropic_error, anthropic_route, register_messages
from runtime.http.observe import live_metrics, request_ended, server_span
from runtime.http.quota_headers import quota_headers
from runtime.http.responses import json_response
from runtime.http.tracing import continue_or_start, request_id
from runtime.ledger.journal import LedgerUnavailable

log = logging.getLogger("tollgate.web")
EXCHANGE = "tollgate.exchange"
CLEANUP_DEADLINE_S = 10.0

# error class → (status, OpenAI error type, code); the first matching row wins.
ERRORS: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (Unauthenticated, 401, "invalid_request_error", "invalid_api_key"),
    (ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    (NotFound, 404, "invalid_request_error", "not_found"),
    (Conflict, 409, "invalid_request_error", "conflict"),
    (PreviousResponseNotFound, 404, "invalid_request_error", "previous_response_not_found"),
    (InvalidRequest, 400, "invalid_request_error", "invalid_request"),
    (TenantDisabled, 403, "permission_error", "tenant_disabled"),
    (ModelNotAllowed, 403, "permission_error", "model_not_allowed"),
    (ModelUnpriced, 403, "permission_error", "model_unpriced"),
    (CostUnbounded, 403, "permission_error", "cost_unbounded"),
    (BudgetExceeded, 402, "insufficient_quota", "budget_exceeded"),
    (RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
    (RequestRefused, 400, "invalid_request_error", "refused"),
    (UpstreamsRateLimited, 429, "rate_limit_error", "upstream_rate_limited"),
    (UpstreamFailed, 502, "api_error", "upstream_error"),
    (ProviderUnavailable, 503, "api_error", "provider_unavailable"),
    (Overloaded, 503, "api_error", "overloaded"),
    (LedgerUnavailable, 503, "api_error", "ledger_unavailable"),
    (ActorUnavailable, 503, "api_error", "service_unavailable"),
    (GatewayError, 500, "api_error", "internal_error"),
    (ProviderError, 502, "api_error", "upstream_error"),
)
HTTP_CODES = {
    404: ("invalid_request_error", "not_found", "Unknown path: {path}."),
    405: ("invalid_request_error", "method_not_allowed", "Method {method} is not allowed on {path}."),
    408: ("invalid_request_error", "request_timeout", "The request body did not arrive in time."),
    413: ("invalid_request_error", "request_too_large", "The request body is larger than {limit} bytes."),
}


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@attrs.frozen
class ErrorReply:
    """What an error is answered with: status, OpenAI error `type`/`code`, message, `param`, headers."""

    status: int
    type: str
    code: str
    message: str
    param: str | None = None
    headers: dict[str, str] = attrs.field(factory=dict)

    def response(self) -> Response:
        return json_response(error_body(self.message, self.type, self.code, self.param), self.status, self.headers)


def error_reply(error: BaseException) -> ErrorReply:
    """The one walk of `ERRORS` for `error` (a refusal's status and code are also what the ledger records)."""
    row = next((row for row in ERRORS if isinstance(error, row[0])), None)
    if row is None:
        log.error("unexpected error", exc_info=error)
        return ErrorReply(500, "api_error", "internal_error", "The gateway failed unexpectedly.")
    _, status, type_, code = row
    headers: dict[str, str] = {}
    message = str(error)
    param = None
    if isinstance(error, RequestRefused):
        message, param, code = error.message, error.param, error.code
        if isinstance(error, RateLimited):
            headers.update(quota_headers(error.quotas))
            if error.retry_after is not None:
                headers["retry-after"] = str(max(1, math.ceil(error.retry_after)))
    elif isinstance(error, ProviderError):
        message = error.message
        if not error.retryable and error.status and 400 <= error.status < 500:
            status, type_, code = error.status, "invalid_request_error", "upstream_rejected"
    elif isinstance(error, GatewayError):
        message = error.message
        if error.retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(error.retry_after)))
    return ErrorReply(status, type_, code, message, param, headers)


def error_response(error: BaseException, max_body_bytes: int) -> Response:
    if isinstance(error, HTTPException):
        status = error.code or 500
        type_, code, template = HTTP_CODES.get(status, ("invalid_request_error", "http_error", "{name}."))
        message = template.format(path=request.path, method=request.method, limit=max_body_bytes, name=error.name)
        if anthropic_route(request.path):
            return anthropic_error(status, message)
        return json_response(error_body(message, type_, code), status)
    reply = error_reply(error)
    if anthropic_route(request.path):
        return anthropic_error(reply.status, reply.message, reply.headers)
    return reply.response()


def model_json(name: str) -> dict[str, Any]:
    """OpenAI's model object."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "tollgate"}


def closers(scope: Any) -> list[Callable[[str], Awaitable[None]]]:
    """The cleanup list `RequestLifetime` keeps for this request; each closer is told why it ended."""
    found: list[Callable[[str], Awaitable[None]]] = scope[CLOSERS]
    return found


@attrs.define(eq=False)
class _Lifetime:
    """One request's state as `RequestLifetime` and the shared write watcher see it."""

    scope: dict[str, Any]
    closers: list[Callable[[str], Awaitable[None]]]
    app_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    reason: str = "client_disconnected"
    write_started: float | None = None
    stuck: bool = False

    async def close_all(self, why: str) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_DEADLINE_S):
            for close in self.closers:
                await close(why)

    async def end_stuck(self) -> None:
        self.reason = "client_stuck"
        log.info("%s %s: client stopped reading; ending its request", self.scope.get("method"), self.scope.get("path"))
        await self.close_all(self.reason)
        self.app_scope.cancel()


class RequestLifetime:
    """ASGI wrapper around the app, for every HTTP request:

    - whatever happens to it (even a disconnect before Quart iterates the body), the closers it
      registered run, shielded and under a deadline, before it is gone — told why it ended;
    - a response write blocked longer than `write_timeout_s` (a client that stopped reading) runs the
      closers at once: the upstream stream is closed, the lease released, the request settled as
      `client_stuck`. (Hypercorn shields its socket writes, so the connection itself goes when the
      kernel gives up on the peer.) One watcher task checks every request's write, twice per
      `write_timeout_s`, while any request is alive — not a watchdog task per request;
    - `in_flight` counts requests alive, for `statistics()`.
    """

    def __init__(self, app: Any, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        self.write_timeout_s = gateway.config.server.write_timeout_s
        self._alive: set[_Lifetime] = set()
        self._watching = False

    async def _watch(self) -> None:
        """The shared write watcher: a system task, ending when no request is alive."""
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    await trio.sleep(self.write_timeout_s / 2)
                    if not self._alive:
                        # decided with no checkpoint in between: a request arriving from now on starts a new one
                        self._watching = False
                        return
                    now = trio.current_time()
                    for life in list(self._alive):
                        started = life.write_started
                        if started is not None and not life.stuck and now - started >= self.write_timeout_s:
                            life.stuck = True
                            nursery.start_soon(life.end_stuck)
        except Exception:  # a system task's failure would crash the run: log it, the next request restarts it
            self._watching = False
            log.exception("the response write watcher failed")
        except BaseException:  # the run ends (its system tasks are cancelled)
            self._watching = False
            raise

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        closers: list[Callable[[str], Awaitable[None]]] = []
        scope[CLOSERS] = closers
        life = _Lifetime(scope, closers)
        status: int | None = None
        accounted = False

        def ended(disconnected: str | None) -> None:
            nonlocal accounted
            if not accounted:
                accounted = True
                request_ended(self.gateway, scope, scope.get(EXCHANGE), status or 499, disconnected)

        async def tracked_send(message: Any) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = message.get("status")
            elif message.get("type") == "http.response.body" and not message.get("more_body", False):
                ended(None)  # before the last byte leaves: a client that saw its answer finds it counted
            life.write_started = trio.current_time()
            try:
                await send(message)
            finally:
                life.write_started = None

        self.gateway.http_in_flight += 1
        self._alive.add(life)
        if not self._watching:
            self._watching = True
            trio.lowlevel.spawn_system_task(self._watch, name="response write watcher")
        try:
            with life.app_scope:
                await self.app(scope, receive, tracked_send)
        finally:
            self._alive.discard(life)
            if self.gateway.draining.is_set() and life.reason == "client_disconnected":
                life.reason = "shutdown"
            if closers:
                await life.close_all(life.reason)
            self.gateway.http_in_flight -= 1
            ended(life.reason)  # the answer never completed


def chat_parts(gateway: Gateway) -> ChatParts:
    """What the chat use case is given of the gateway."""
    return ChatParts(
        books=gateway.books,
        tenants=gateway.tenants,
        journal=gateway.journal,
        providers=gateway.providers,
        routes=gateway.routes,
        output_limit=gateway.output_limit,
        clock=gateway.clock,
        draining=gateway.draining,
        metrics=gateway.metrics,
        cache=gateway.cache,
    )


def create_app(gateway: Gateway) -> QuartTrio:
    server = gateway.config.server
    parts = chat_parts(gateway)
    app = QuartTrio("tollgate")
    app.config.update(
        RESPONSE_TIMEOUT=None,  # quart's default (60 s) silently cuts long streams
        BODY_TIMEOUT=server.body_timeout_s,
        MAX_CONTENT_LENGTH=server.max_body_bytes,
    )

    @app.before_request
    async def begin() -> None:
        headers = request.headers
        g.exchange = Exchange(request_id(headers.get("X-Request-ID")), continue_or_start(headers.get("traceparent")))
        if gateway.telemetry.enabled:
            server_span(g.exchange, gateway.telemetry.tracer, request.method, request.path)
        scope: Any = request.scope
        scope[EXCHANGE] = g.exchange  # for the access log and the request counter, at the edge

    @app.after_request
    async def stamp(response: Response) -> Response:
        exchange: Exchange | None = g.get("exchange")
        if exchange is not None:
            response.headers["x-request-id"] = exchange.request_id
            if exchange.recorded:
                response.headers["x-tollgate-ledger-id"] = str(exchange.ledger_id)
            response.headers["traceparent"] = exchange.trace.traceparent
            for name, value in quota_headers(exchange.quotas).items():
                response.headers[name] = value
        return response

    @app.errorhandler(HTTPException)
    async def on_http_error(error: HTTPException) -> Response:
        return error_response(error, server.max_body_bytes)

    @app.errorhandler(Exception)
    async def on_error(error: Exception) -> Response:
        return error_response(error, server.max_body_bytes)

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        answer = await handle_chat(
            parts,
            g.exchange,
            request.headers.get("Authorization"),
            lambda: request.get_data(cache=False, as_text=False),
            error_reply,
            request.headers.get("Cache-Control"),
        )
        if isinstance(answer, ErrorReply):  # refused, and recorded so
            return answer.response()
        if isinstance(answer, Streaming):
            closers(request.scope).append(answer.relay.aclose)
            return Response(answer.relay, 200, answer.headers, content_type="text/event-stream; charset=utf-8")
        return json_response(answer.body, 200, answer.headers)

    @app.post("/v1/embeddings")
    async def embeddings() -> Response:
        """OpenAI's embeddings: the chat use case (admission, routing, fallback, settlement) with
        the body read by `parse_embeddings_request`, served only by providers that embed."""
        answer = await handle_chat(
            parts,
            g.exchange,
            request.headers.get("Authorization"),
            lambda: request.get_data(cache=False, as_text=False),
            error_reply,
            operation="embeddings",
            parse=parse_embeddings_request,
        )
        if isinstance(answer, ErrorReply):
            return answer.response()
        assert isinstance(answer, Answered)  # an embeddings request never streams
        body = answer.body
        if answer.usage_corrected:  # billed otherwise than reported: shown as billed, in embeddings' shape
            prompt = body["usage"]["prompt_tokens"]
            body["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
        return json_response(body, 200, answer.headers)

    register_messages(app, parts, error_reply)

    conversations = gateway.conversations
    assert conversations is not None  # opened with the ledger

    @app.post("/v1/responses")
    async def responses_create() -> Response:
        answer = await handle_responses(
            parts,
            conversations,
            g.exchange,
            request.headers.get("Authorization"),
            lambda: request.get_data(cache=False, as_text=False),
            error_reply,
        )
        if isinstance(answer, ErrorReply):
            return answer.response()
        if isinstance(answer, StreamingResponse):
            closers(request.scope).append(answer.stream.aclose)
            return Response(answer.stream, 200, answer.headers, content_type="text/event-stream; charset=utf-8")
        return json_response(answer.body, 200, answer.headers)

    def response_missing(response_id: str) -> NotFound:
        return NotFound(f"Response with id '{response_id}' not found.")

    @app.get("/v1/responses/<response_id>")
    async def responses_retrieve(response_id: str) -> Response:
        """This tenant's stored response; another tenant's, or an expired one, is not found (404)."""
        tenant = gateway.books.authenticate(request.headers.get("Authorization"))
        stored = await conversations.get(tenant.name, response_id, gateway.clock().timestamp())
        if stored is None:
            raise response_missing(response_id)
        return json_response(stored.response)

    @app.delete("/v1/responses/<response_id>")
    async def responses_delete(response_id: str) -> Response:
        tenant = gateway.books.authenticate(request.headers.get("Authorization"))
        if not await conversations.delete(tenant.name, response_id, gateway.clock().timestamp()):
            raise response_missing(response_id)
        return json_response({"id": response_id, "object": "response.deleted", "deleted": True})

    @app.get("/v1/models")
    async def models() -> Response:
        tenant = gateway.books.authenticate(request.headers.get("Authorization"))
        allowed = tenant.tenant_policy.allowed_models
        names = [name for name in gateway.routes.models() if not allowed or name in allowed]
        return json_response({"object": "list", "data": [model_json(name) for name in names]})

    @app.get("/v1/models/<path:model>")  # ids may hold '/': an alias, or PROVIDER/MODEL
    async def retrieve_model(model: str) -> Response:
        """Any name the chat route would serve this tenant; otherwise 404 `model_not_found`, as OpenAI."""
        tenant = gateway.books.authenticate(request.headers.get("Authorization"))
        allowed = tenant.tenant_policy.allowed_models
        if not gateway.routes.serves(model) or (allowed and model not in allowed):
            raise ModelNotFound(f"The model '{model}' does not exist or you do not have access to it.")
        return json_response(model_json(model))

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        instance = gateway.instances.instance
        if gateway.draining.is_set():
            return json_response({"status": "draining", "instance": instance}, 503)
        if not gateway.ready:
            return json_response({"status": "starting", "instance": instance}, 503)
        return json_response({"status": "ready", "instance": instance})

    if gateway.config.metrics.enabled and gateway.config.metrics.port is None:
        gateway.metrics.add_collector(lambda: live_metrics(gateway))

        @app.get("/metrics")
        async def metrics() -> Response:
            if gateway.config.metrics.require_admin_key:
                gateway.admin.check(request.headers.get("Authorization"))
            body = generate_latest(gateway.metrics.registry)
            return Response(body, 200, content_type=CONTENT_TYPE_LATEST)

    register_admin(app, gateway)
    app.register_blueprint(admin_series.admin_series(gateway))
    app.register_blueprint(dashboard.dashboard(gateway))
    return app
