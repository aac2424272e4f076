"""`handle_responses`: one OpenAI Responses API request, served by the chat use case.

The request (with the turns `previous_response_id` names, from this tenant's stored conversations)
is translated into a chat completion body (`policies.responses`) and handed to `handle_chat`:
admission, the worst-case reservation (instructions, input items, tools and every earlier turn are
in the chat body it prices), rate limits, routing, fallback, breakers, settlement and the ledger
are the chat request's, unchanged. Its answer is translated back: a `response` object, or the
chat relay's SSE re-spoken as Responses' named events (`ResponsesStream`; the relay still settles
on every path, a disconnect included). With `store` (the default) the turn is kept in
`Conversations` before the client sees it complete, so a continuation never races its parent.

A provider configured with `responses = true` is passed the client's own body instead
(`policies.responses.native_body`: `store: false`, the earlier turns as `input` items), and its
answer — the `response` object, or its stream events as they came (`ResponsesRelay`, which holds
`response.completed` back until the request is settled and the turn stored) — goes to the client as
it sent it, `x_gateway` added to a whole answer. The turn is stored under the provider's response
id, with the same chat history as a translated turn: a chain continues on any provider, and only
within its tenant.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from policies.errors import InvalidRequest, RequestRefused
from policies.responses import (
    ResponseEvents,
    assistant_message,
    chat_request,
    native_body,
    output_items,
    response_object,
    translatable,
    unbounded_inputs,
    usage_object,
)
from policies.validation import ChatRequest, body_bytes, parse_chat_request, parse_json
from providers.errors import ProviderError, UpstreamTimeout
from providers.upstream import Chunk
from runtime.chat import router
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
        """Store the answered turn (when asked to) under the response's id: the gateway's own, or a
        pass-through provider's."""
        if self.store:
            history = [*self.history, assistant_message(response.get("output") or [])]
            found = response.get("id")
            response_id = found if isinstance(found, str) and found else self.response_id
            await conversations.put(self.tenant, response_id, StoredTurn(response, history), now)


def passed_through(native: dict[str, Any] | None) -> bool:
    """Whether an answer is a pass-through provider's own `response` (not another API's native answer)."""
    return native is not None and native.get("object") == "response"


async def _chat_body(
    conversations: Conversations, tenant: str, body: Any, now: float, passed: Callable[[Any], bool]
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """The chat translation, the history after this turn's input, and the pass-through body.
    `passed(model)`: whether every provider serving the model is passed the body through, when what
    chat cannot say (built-in tools, file inputs, ...) is left out of the reading, not refused."""
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
    chat, turn = chat_request(translatable(body) if passed(body.get("model")) else body, history)
    return chat, [*history, *turn], native_body(body, history)


def all_passed_through(parts: ChatParts, model: Any) -> bool:
    """Whether every provider serving `model` takes Responses calls as they are (`responses = true`)."""
    try:
        deployments = router.candidates(parts.routes, model) if isinstance(model, str) else ()
    except ModelNotFound:
        return False
    return bool(deployments) and all(parts.providers[d.provider].config.responses for d in deployments)


def responses_parser(native: dict[str, Any]) -> Callable[[Any], ChatRequest]:
    """Reads the chat translation, keeping the pass-through body as `native` (and reserving for the
    larger of the two)."""

    def parse(chat: Any) -> ChatRequest:
        read = parse_chat_request(chat)
        size = max(read.prompt_bytes, body_bytes(native))
        unbounded = unbounded_inputs(native)
        return attrs.evolve(read, prompt_bytes=size, native=native, native_api="responses", unbounded=unbounded)

    return parse


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
        passed = functools.partial(all_passed_through, parts)
        chat, history, native = await _chat_body(conversations, tenant.name, body, now, passed)
    except RequestRefused as refusal:  # recorded as the chat use case records its own refusals
        verdict = judge(refusal)
        await reject(parts.journal, exchange, tenant, body, verdict.code, verdict.status, received_at, "responses")
        return verdict
    encoded = json.dumps(chat, separators=(",", ":")).encode()

    async def chat_body() -> bytes:
        return encoded

    answer = await handle_chat(
        parts,
        exchange,
        authorization,
        chat_body,
        judge,
        operation="responses",
        parse=responses_parser(native),
        relay=ResponsesRelay,
    )
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
    if passed_through(answer.native):  # the provider's own response, as it answered
        assert answer.native is not None
        response = dict(answer.native)
        if answer.usage_corrected:  # billed otherwise than reported: the client sees what was billed
            response["usage"] = usage_object(completion.get("usage"))
        await turn.keep(conversations, response, now)
        return Answered({**response, "x_gateway": completion.get("x_gateway")}, answer.headers)
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


HELD = ("event: response.completed\n", "event: response.incomplete\n")


def _billed(event: str, usage: dict[str, object] | None) -> str:
    """A held closing event with the usage billed (`usage`, chat's shape) when it is not what was reported."""
    if usage is None:
        return event
    head, _, data = event.partition("data: ")
    closing = json.loads(data)
    if isinstance(closing.get("response"), dict):
        closing["response"] = {**closing["response"], "usage": usage_object(usage)}
    return f"{head}data: {json.dumps(closing, separators=(',', ':'))}\n\n"


class ResponsesRelay(StreamRelay):
    """A pass-through provider's Responses events are relayed as they came (`Chunk.native`), its
    closing `response.completed` (or `incomplete`) held back until the settlement is durable; any
    other provider's chunks are the chat relay's SSE, which `ResponsesStream` re-speaks."""

    _held: list[str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opening: list[Chunk] = self._pending or []
        self.native = any(chunk.native is not None for chunk in opening)

    def _encode(self, batch: list[Chunk]) -> bytes:
        if not self.native:
            return super()._encode(batch)
        out = []
        for chunk in batch:
            self._read(chunk)
            if chunk.native is None:
                continue
            if chunk.native.startswith(HELD):
                self._held = [*(self._held or []), chunk.native]
            else:
                out.append(chunk.native)
        return "".join(out).encode()

    def _closing(self) -> bytes:
        if not self.native:
            return super()._closing()
        corrected = self._record.corrected_usage
        usage = corrected.as_openai() if corrected is not None else None
        return "".join(_billed(event, usage) for event in self._held or ()).encode()

    def _failure(self, error: ProviderError) -> bytes:
        if not self.native:
            return super()._failure(error)
        message = f"The upstream stream failed after it had started ({error.message}); the answer is incomplete."
        code = "upstream_timeout" if isinstance(error, UpstreamTimeout) else "upstream_error"
        data = {"type": "error", "code": code, "message": message, "param": None}
        return f"event: error\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class ResponsesStream:
    """The chat relay's SSE, re-spoken as Responses events; closing it closes the relay (which settles).
    A pass-through provider's events (`ResponsesRelay.native`) go out as they came; the turn is
    stored from its closing event before that event is sent."""

    def __init__(
        self, relay: StreamRelay | Replay, turn: Turn, conversations: Conversations, clock: Callable[[], Any]
    ) -> None:
        self._relay = relay
        self._turn = turn
        self._conversations = conversations
        self._clock = clock
        self._events = ResponseEvents(turn.response_id, turn.created_at, turn.request, turn.request["model"])
        self._native = isinstance(relay, ResponsesRelay) and relay.native
        self._started = self._native  # a pass-through provider's stream opens itself
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
        if self._native:
            return await self._relayed(raw)
        return out + await self._translate(raw)

    async def _relayed(self, raw: bytes) -> bytes:
        """A pass-through provider's events, unchanged; its closing one stores the turn first."""
        for block in raw.split(b"\n\n"):
            if block.startswith(tuple(kind.encode() for kind in HELD)):
                closing = json.loads(block.partition(b"data: ")[2])
                response = closing.get("response")
                if isinstance(response, dict):
                    await self._turn.keep(self._conversations, response, self._clock().timestamp())
        return raw

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
