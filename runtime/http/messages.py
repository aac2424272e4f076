"""Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

The tenant key comes as `x-api-key` (the anthropic SDK's default) or `Authorization: Bearer`; the
`anthropic-version` and `anthropic-beta` headers are accepted and not needed. A message is the chat
use case (`handle_chat`, operation "messages") with the body read by `parse_messages_request`: the
same admission, budgets, routing, fallback, settlement and ledger events. Errors on these routes are
in Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`, with the status the error
table gives (`ANTHROPIC_TYPES` names the type for it).

`count_tokens` is not a billed request: it is authenticated and the model must be one the tenant
may use, but it takes no budget, no rate-limit token and no ledger event. An `anthropic`-kind
provider serving the model counts; otherwise the gateway estimates (`providers.tokens`) and says so
with `x-tollgate-estimated: true`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from quart import Quart, Response, g, request

from policies.errors import InvalidRequest, ModelNotAllowed, RequestRefused
from providers.anthropic import ERROR_STATUSES, AnthropicUpstream, UntranslatableRequest
from providers.errors import ProviderError
from providers.tokens import estimate_prompt_tokens, estimate_tokens
from runtime.chat import router
from runtime.chat.handle import Answered, ChatParts, Streaming, Verdict, handle_chat
from runtime.chat.messages import anthropic_usage, parse_messages_request, to_chat, to_message
from runtime.chat.messages_stream import MessagesStreamRelay
from runtime.errors import ModelNotFound
from runtime.http.responses import json_response

CLOSERS = "tollgate.closers"  # the request's cleanup list, kept by `app.RequestLifetime`
ROUTES = ("/v1/messages", "/v1/messages/count_tokens")
# HTTP status → Anthropic error type (ERROR_STATUSES read backwards; the gateway's 503 is Anthropic's 529)
ANTHROPIC_TYPES = {status: kind for kind, status in ERROR_STATUSES.items()} | {503: "overloaded_error"}


def anthropic_route(path: str) -> bool:
    return path in ROUTES


def anthropic_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    kind = ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return json_response({"type": "error", "error": {"type": kind, "message": message}}, status, headers or {})


FORWARDED = ("anthropic-beta", "anthropic-version")  # without them Anthropic rejects beta fields


def forward_anthropic_headers() -> None:
    g.exchange.forwarded = {name: value for name in FORWARDED if (value := request.headers.get(name))}


def tenant_key() -> str | None:
    """`Authorization` as sent, else the `x-api-key` header as a bearer credential."""
    authorization = request.headers.get("Authorization")
    if authorization is None and (key := request.headers.get("x-api-key")):
        return f"Bearer {key}"
    return authorization


class Refusal(Verdict, Protocol):
    @property
    def message(self) -> str: ...

    @property
    def headers(self) -> dict[str, str]: ...


def register_messages(app: Quart, parts: ChatParts, judge: Callable[[RequestRefused | ModelNotFound], Refusal]) -> None:
    """`judge` is the app's error table (`error_reply`): a refusal's status, and what the ledger records."""

    @app.post("/v1/messages")
    async def messages() -> Response:
        forward_anthropic_headers()
        answer = await handle_chat(
            parts,
            g.exchange,
            tenant_key(),
            lambda: request.get_data(cache=False, as_text=False),
            judge,
            operation="messages",
            parse=parse_messages_request,
            relay=MessagesStreamRelay,
        )
        if isinstance(answer, Streaming):
            scope: Any = request.scope
            scope[CLOSERS].append(answer.relay.aclose)  # the request's lifetime guard closes it, whatever happens
            return Response(answer.relay, 200, answer.headers, content_type="text/event-stream; charset=utf-8")
        if not isinstance(answer, Answered):  # refused, and recorded so
            return anthropic_error(answer.status, answer.message, answer.headers)
        x_gateway = answer.body["x_gateway"]
        if answer.native is None:  # a provider of another kind: its chat answer translated
            message = to_message(answer.body, answer.body.get("model") or x_gateway["served_model"])
        else:
            message = dict(answer.native)
            if answer.usage_corrected:  # billed otherwise than reported: the client sees what was billed
                message["usage"] = anthropic_usage(answer.body["usage"])
        message["x_gateway"] = x_gateway
        return json_response(message, 200, answer.headers)

    @app.post("/v1/messages/count_tokens")
    async def count_tokens() -> Response:
        tenant = parts.books.authenticate(tenant_key())
        forward_anthropic_headers()
        body = await request.get_json(force=True, silent=True)
        chat = to_chat({"max_tokens": 1, **body} if isinstance(body, dict) else body)
        deployments = router.candidates(parts.routes, chat["model"])
        allowed = tenant.tenant_policy.allowed_models
        if allowed and chat["model"] not in allowed:
            raise ModelNotAllowed(f"The model '{chat['model']}' is not allowed for this key.", param="model")
        for deployment in deployments:
            upstream = parts.providers[deployment.provider].upstream
            if isinstance(upstream, AnthropicUpstream):
                try:
                    counted = await upstream.count_tokens(body, deployment.model, g.exchange.upstream_headers())
                except UntranslatableRequest as error:
                    raise InvalidRequest(str(error)) from None
                except ProviderError:
                    continue  # another provider, or the estimate
                return json_response(counted, 200, {"x-tollgate-estimated": "false"})
        tools = sum(estimate_tokens(str(tool)) for tool in chat.get("tools") or ())
        estimate = estimate_prompt_tokens(chat["messages"]) + tools
        return json_response({"input_tokens": estimate}, 200, {"x-tollgate-estimated": "true"})
