"""The raw-socket clients' HTTP/1.1 response parser, fed in the worst way: one byte at a time."""

from __future__ import annotations

from bench.http1 import ResponseParser, request_bytes


def feed_bytewise(parser: ResponseParser, data: bytes) -> bytes:
    body = b""
    for i in range(len(data)):
        body += parser.feed(data[i : i + 1])
    return body


def test_chunked_body_split_anywhere() -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"
    parser = ResponseParser()
    assert feed_bytewise(parser, wire) == b"hello, world"
    assert parser.complete
    assert parser.status == 200


def test_content_length_then_next_response_on_same_connection() -> None:
    wire = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
    parser = ResponseParser()
    assert parser.feed(wire) == b"abc"
    assert parser.complete
    assert parser.status == 201
    parser.reset()
    assert parser.feed(b"") == b""
    assert parser.complete
    assert parser.status == 404


def test_request_bytes() -> None:
    raw = request_bytes("http://127.0.0.1:8080/v1/chat/completions", b"{}", "k")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n")
    assert b"Content-Length: 2" in head
    assert b"Authorization: Bearer k" in head
    assert body == b"{}"
