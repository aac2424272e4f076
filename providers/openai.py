"""Any OpenAI-compatible server: OpenAI, Azure-style base URLs, vLLM, Ollama, Groq, ...

The wire format only: encode the request, decode responses and stream events. `OpenAIUpstream` puts
it on a `providers.http.Endpoint` (`POST {base_url}/chat/completions`), and embeds: the client's
embeddings body passed through (`model` replaced) to `POST {base_url}/embeddings`, its usage read.
A provider configured with `responses = true` is also sent a Responses API call as the client made
it (`POST {base_url}/responses`, `providers.openai_responses`); without it, such a call is sent as
its chat translation.
"""

from __future__ import annotations

import json

import httpx

from events.usage import Usage
from providers import openai_responses
from providers.errors import MalformedResponse, UpstreamServerError, json_answer
from providers.http import Endpoint, SSEChunkStream, secrets_of
from providers.sse import SSEEvent, carries_usage, content_size
from providers.upstream import Call, Chunk, Completion, Timeouts, chunk_from_openai

CHAT_PATH = "/chat/completions"
EMBEDDINGS_PATH = "/embeddings"


def encode_request(call: Call) -> bytes:
    """The client's JSON with only `model` replaced; streams always ask for usage."""
    body = dict(call.body)
    body["model"] = call.upstream_model
    if call.stream:
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode_response(provider: str, content: bytes) -> Completion:
    body = json_answer(provider, content, lambda b: isinstance(b.get("choices"), list), "a chat completion")
    return Completion(body, Usage.from_openai(body.get("usage")))


def encode_embeddings(call: Call) -> bytes:
    """The client's embeddings JSON with only `model` replaced."""
    return json.dumps({**call.body, "model": call.upstream_model}, separators=(",", ":"), ensure_ascii=False).encode()


def decode_embeddings(provider: str, content: bytes) -> Completion:
    """An embeddings answer (`{"object": "list", "data": [...], "usage": {prompt_tokens, total_tokens}}`)."""
    body = json_answer(provider, content, lambda b: isinstance(b.get("data"), list), "a list of embeddings")
    return Completion(body, Usage.from_openai(body.get("usage")))


def decode_stream_event(provider: str, event: SSEEvent) -> Chunk | None:
    """One SSE event as a chunk; None for the closing `[DONE]`."""
    text = event.data
    if text == "[DONE]":
        return None
    if text.startswith("{") and text.endswith("}") and '"error"' not in text and not carries_usage(text):
        # No usage and no error: the relay forwards the text as it came; nothing here needs parsing.
        return Chunk.unparsed(text, content_size(text))
    try:
        data = json.loads(text)
    except ValueError:
        raise MalformedResponse(provider, f"provider {provider!r} sent a stream event that is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedResponse(provider, f"provider {provider!r} sent a stream event that is not an object")
    if "error" in data:
        raise UpstreamServerError(provider, f"provider {provider!r} reported an error mid-stream")
    return chunk_from_openai(data, event.data)


class OpenAIUpstream:
    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        timeouts: Timeouts,
        max_connections: int,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        responses: bool = False,
    ) -> None:
        self.name = name
        self.responses = responses  # a Responses API call is passed through to `{base_url}/responses`
        default_headers = {"content-type": "application/json", **(headers or {})}
        if api_key:
            default_headers["authorization"] = f"Bearer {api_key}"
        self.secrets = secrets_of(api_key, headers)
        url = base_url.rstrip("/")  # one client (one pool) for every path
        self._endpoint = Endpoint(name, url, default_headers, self.secrets, timeouts, max_connections, transport)

    def _passed_through(self, call: Call) -> bool:
        return self.responses and call.native is not None and call.native_api == "responses"

    async def complete(self, call: Call) -> Completion:
        if self._passed_through(call):
            answer = await self._endpoint.post(openai_responses.encode_request(call), call.headers, "/responses")
            return openai_responses.decode_response(self.name, answer)
        answer = await self._endpoint.post(encode_request(call), call.headers, CHAT_PATH)
        return decode_response(self.name, answer)

    async def open_stream(self, call: Call) -> SSEChunkStream:
        if self._passed_through(call):
            content = openai_responses.encode_request(call)
            responses = openai_responses.ResponsesStreamDecoder(self.name)
            return await self._endpoint.open_sse(content, call.headers, responses, "response.completed", "/responses")
        decoder = OpenAIStreamDecoder(self.name)
        return await self._endpoint.open_sse(encode_request(call), call.headers, decoder, "[DONE]", CHAT_PATH)

    async def embed(self, call: Call) -> Completion:
        answer = await self._endpoint.post(encode_embeddings(call), call.headers, EMBEDDINGS_PATH)
        return decode_embeddings(self.name, answer)

    async def aclose(self) -> None:
        await self._endpoint.aclose()


class OpenAIStreamDecoder:
    """OpenAI's own stream: one chunk per event, closed by `[DONE]`."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.finished = False

    def feed(self, event: SSEEvent) -> list[Chunk]:
        chunk = decode_stream_event(self.provider, event)
        if chunk is None:
            self.finished = True
            return []
        return [chunk]
