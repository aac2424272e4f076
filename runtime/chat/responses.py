"""`handle_responses`: one OpenAI Responses API request, served by the chat use case.

The request (with the turns `previous_response_id` names, from this tenant's stored conversations)
is translated into a chat completion body (`policies.responses`) and handed to `handle_chat`:
admission, the worst-case reservation (instructions, input items, tools and every earlier turn are
in the chat body it prices), rate limits, routing, fallback, breakers, settlement and the ledger
are the chat request's, unchanged. Its answer is translated back: a `response` object, or the
chat relay's SSE re-spoken as Responses' named events (`ResponsesStream`; the relay still settles
on every path, a disconnect included). With `store` (the default) the turn is kept in
`Conversations` before the client sees it complete, so a continuation never races its parent.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from policies.errors import InvalidRequest, RequestRefused
from policies.responses import (
    ResponseEvents,
    assistant_message,
    chat_request,
    output_items,
    response_object,
)
from policies.validation import parse_json
from runtime.chat.cached import Replay
from runtime.chat.exchange import Exchange
from runtime.chat.handle import Answered, ChatParts, Streaming, V, handle_chat
from runtime.chat.record import reject
from runtime.chat.relay import StreamRelay
from runtime.errors import ModelNotFound
from runtime.ledger.conversations import Conversations, StoredTurn


class PreviousResponseNotFound(InvalidRequest):
    """`previous_response_id` names no response this tenant has stored (answered 404)."""

    code = "previous_response_not_found"


@attrs.frozen
class Turn:
    """What a response needs to be answered and stored: its id, the request, the history it extends."""

    response_id: str
    created_at: int
    request: dict[str, Any]
    history: list[dict[str, Any]]  # earlier turns and this turn's input, as chat messages
    tenant: str
    store: bool

    async def keep(self, conversations: Conversations, response: dict[str, Any], now: float) -> None:
        if self.store:
            history = [*self.history, assistant_message(response["output"])]
            await conversations.put(self.tenant, self.response_id, StoredTurn(response, history), now)


async def _chat_body(
    conversations: Conversations, tenant: str, body: Any, now: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    history: list[dict[str, Any]] = []
    previous = body.get("previous_response_id")
    if previous is not None:
        stored = await conversations.get(tenant, previous, now) if isinstance(previous, str) else None
        if stored is None:
            raise PreviousResponseNotFound(
                f"Previous response with id '{previous}' not found.", param="previous_response_id"
            )
        history = stored.history
    chat, turn = chat_request(body, history)
    return chat, [*history, *turn]


async def handle_responses(
    parts: ChatParts,
    conversations: Conversations,
    exchange: Exchange,
    authorization: str | None,
    read_body: Callable[[], Awaitable[bytes | str]],
    judge: Callable[[RequestRefused | ModelNotFound], V],
) -> Answered | StreamingResponse | V:
    tenant = parts.books.authenticate(authorization)
    received_at = parts.clock()
    now = received_at.timestamp()
    raw = await read_body()
    body: Any = None
    try:
        body = parse_json(raw)
        chat, history = await _chat_body(conversations, tenant.name, body, now)
    except RequestRefused as refusal:  # recorded as the chat use case records its own refusals
        verdict = judge(refusal)
        await reject(parts.journal, exchange, tenant, body, verdict.code, verdict.status, received_at, "responses")
        return verdict
    encoded = json.dumps(chat, separators=(",", ":")).encode()

    async def chat_body() -> bytes:
        return encoded

    answer = await handle_chat(parts, exchange, authorization, chat_body, judge, operation="responses")
    if not isinstance(answer, Answered | Streaming):
        return answer
    turn = Turn(
        response_id=f"resp_{exchange.ledger_id.hex}",
        created_at=int(now),
        request=body,
        history=history,
        tenant=tenant.name,
        store=body.get("store") is not False,
    )
    if isinstance(answer, Streaming):
        return StreamingResponse(ResponsesStream(answer.relay, turn, conversations, parts.clock), answer.headers)
    completion = answer.body
    choice = (completion.get("choices") or [{}])[0]
    response = response_object(
        turn.response_id,
        turn.created_at,
        body,
        completion.get("model") or chat["model"],
        output_items(choice.get("message") or {}),
        completion.get("usage"),
        finish_reason=choice.get("finish_reason"),
    )
    await turn.keep(conversations, response, now)
    response["x_gateway"] = completion.get("x_gateway")
    return Answered(response, answer.headers)


@attrs.frozen
class StreamingResponse:
    """A Responses stream that has started: the events to iterate (and close when the request ends)."""

    stream: ResponsesStream
    headers: dict[str, str]


class ResponsesStream:
    """The chat relay's SSE, re-spoken as Responses events; closing it closes the relay (which settles)."""

    def __init__(
        self, relay: StreamRelay | Replay, turn: Turn, conversations: Conversations, clock: Callable[[], Any]
    ) -> None:
        self._relay = relay
        self._turn = turn
        self._conversations = conversations
        self._clock = clock
        self._events = ResponseEvents(turn.response_id, turn.created_at, turn.request, turn.request["model"])
        self._started = False
        self._finished = False

    def __aiter__(self) -> ResponsesStream:
        return self

    async def __anext__(self) -> bytes:
        if self._finished:
            raise StopAsyncIteration
        out = b""
        if not self._started:
            self._started = True
            out = self._events.start()
        try:
            raw = await self._relay.__anext__()
        except StopAsyncIteration:
            self._finished = True
            return out
        return out + await self._translate(raw)

    async def _translate(self, raw: bytes) -> bytes:
        out = []
        for block in raw.split(b"\n\n"):
            if not block:
                continue
            if block.startswith(b"event: error"):
                error = json.loads(block.partition(b"data: ")[2]).get("error") or {}
                out.append(self._events.fail(error))
                self._finished = True
            elif block.startswith(b"data: [DONE]"):
                self._finished = True
            elif block.startswith(b"data: "):
                data = json.loads(block[6:])
                if data.get("usage") is not None and not data.get("choices"):
                    out.append(await self._complete(data))
                else:
                    out.append(self._events.chunk(data))
        return b"".join(out)

    async def _complete(self, closing: dict[str, Any]) -> bytes:
        """The relay's closing chunk (its request settled): store the turn, then say `response.completed`."""
        events, response = self._events.finish(closing["usage"], closing.get("x_gateway"))
        await self._turn.keep(self._conversations, response, self._clock().timestamp())
        return events

    async def aclose(self, reason: str | None = None) -> None:
        await self._relay.aclose(reason)
