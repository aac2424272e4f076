"""Early answers on a keep-alive connection (issue #11, item 8): the next request on the same
connection is answered, every time, over real sockets against the real server."""

from __future__ import annotations

import httpx
import pytest
import trio

from runtime.auth import DEMO_KEY
from tests.harness import make_config, running_gateway

MAX_BODY = 1024 * 1024
GOOD = {"Authorization": f"Bearer {DEMO_KEY}"}
CHAT = b'{"model":"sim-1","messages":[{"role":"user","content":"' + b"x" * (MAX_BODY - 200) + b'"}]}'


@pytest.mark.slow
async def test_sixty_early_answers_then_a_good_request_on_one_connection() -> None:
    config = make_config(server={"host": "127.0.0.1", "port": 0, "grace_period_s": 2.0, "max_body_bytes": MAX_BODY})
    bad_requests = [
        ("401 before the body is read", 401, {"Authorization": "Bearer wrong"}, CHAT),
        ("413", 413, GOOD, CHAT + b" " * (3 * MAX_BODY)),
        ("400", 400, GOOD, b'{"model": "sim-1", "messages": ' + b"x" * (MAX_BODY - 100)),
    ]
    async with running_gateway(config) as gw, httpx.AsyncClient(base_url=gw.url, timeout=5) as http:
        for label, status, headers, body in bad_requests:
            for round_ in range(60):
                with trio.fail_after(2):
                    bad = await http.post(
                        "/v1/chat/completions", content=body, headers={**headers, "content-type": "application/json"}
                    )
                assert bad.status_code == status, (label, round_, bad.text)
                assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
                with trio.fail_after(2):
                    good = await http.get("/v1/models", headers=GOOD)
                assert good.status_code == 200, (label, round_, good.text)
