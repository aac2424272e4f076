"""A minimal incremental HTTP/1.1 response parser for the bench's raw-socket clients.

It frames responses (status line, headers, then a Content-Length, chunked or read-until-close body) and
hands back the body bytes as they arrive, so the clients can timestamp SSE chunks without the cost of a
full HTTP library per chunk. It is not a general-purpose parser: no trailers, no 1xx, no pipelining.
"""

from __future__ import annotations

import resource
from urllib.parse import urlsplit

HEAD, LENGTH, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, UNTIL_CLOSE, DONE = range(7)


class ResponseParser:
    """Feed it bytes; it says what body arrived and whether the response is complete."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.reset()

    def reset(self) -> None:
        """Get ready for the next response on the same connection (keeps any bytes already read)."""
        self.state = HEAD
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.remaining = 0

    @property
    def complete(self) -> bool:
        return self.state == DONE

    def feed(self, data: bytes) -> bytes:
        """Consume data; return the body bytes it completed (decoded from chunked framing)."""
        self.buf += data
        body = bytearray()
        buf = self.buf
        while True:
            if self.state == HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                lines = bytes(buf[:end]).split(b"\r\n")
                del buf[: end + 4]
                self.status = int(lines[0].split(b" ", 2)[1])
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    self.headers[name.strip().lower()] = value.strip()
                if b"chunked" in self.headers.get(b"transfer-encoding", b"").lower():
                    self.state = CHUNK_SIZE
                elif b"content-length" in self.headers:
                    self.remaining = int(self.headers[b"content-length"])
                    self.state = LENGTH if self.remaining else DONE
                else:
                    self.state = UNTIL_CLOSE
            elif self.state in (LENGTH, CHUNK_DATA):
                take = min(self.remaining, len(buf))
                if take == 0:
                    break
                body += buf[:take]
                del buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self.state = DONE if self.state == LENGTH else CHUNK_END
            elif self.state == CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                size = int(bytes(buf[:end]).split(b";")[0], 16)
                del buf[: end + 2]
                self.remaining = size
                self.state = CHUNK_DATA if size else CHUNK_END
                if size == 0:
                    self.remaining = -1  # marks the last chunk: its CRLF ends the body
            elif self.state == CHUNK_END:
                if len(buf) < 2:
                    break
                del buf[:2]
                self.state = DONE if self.remaining == -1 else CHUNK_SIZE
            elif self.state == UNTIL_CLOSE:
                body += buf
                buf.clear()
                break
            else:  # DONE
                break
        return bytes(body)


def request_bytes(url: str, body: bytes, bearer: str, extra_headers: dict[str, str] | None = None) -> bytes:
    """A keep-alive POST of a JSON body to url, ready to write to a socket."""
    parts = urlsplit(url)
    headers = {
        "Host": parts.netloc,
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Authorization": f"Bearer {bearer}",
        **(extra_headers or {}),
    }
    head = f"POST {parts.path or '/'} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` (as given to ``--header``) → (name, value); a value may itself hold colons."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in text for c in "\r\n"):
        raise ValueError(f"not a header line 'Name: value': {text!r}")
    return name.strip(), value.strip()


def header_lines(headers: dict[str, str]) -> list[str]:
    """The ``Name: value`` lines of headers, each checked to parse back the same (no CR/LF smuggled in)."""
    lines = [f"{name}: {value}" for name, value in headers.items()]
    for line, (name, value) in zip(lines, headers.items(), strict=True):
        if parse_header(line) != (name, value):
            raise ValueError(f"header does not survive a round trip: {line!r}")
    return lines


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one: hundreds of streams need more than 1024."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
