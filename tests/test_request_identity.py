"""A client's X-Request-ID is only a correlation id: the ledger's request identity is the gateway's own."""

from __future__ import annotations

from typing import Any

from runtime.auth import DEMO_KEY, hash_key
from tests.harness import ADMIN, make_config, running_gateway

OTHER_KEY = "tg-other-tenant-key-0123456789"
BODY = {"model": "sim-1", "messages": [{"role": "user", "content": "hi"}]}


def two_tenants() -> Any:
    return make_config(
        tenants=[
            {"name": "demo", "api_key_sha256": hash_key(DEMO_KEY)},
            {"name": "other", "api_key_sha256": hash_key(OTHER_KEY)},
        ]
    )


def by_aggregate(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        groups.setdefault(event["aggregate_id"], []).append(event)
    return groups


async def test_two_tenants_sending_the_same_request_id_stay_apart() -> None:
    async with running_gateway(two_tenants()) as gw, gw.http() as http:
        answers = []
        for key in (DEMO_KEY, OTHER_KEY, DEMO_KEY):
            response = await http.post(
                "/v1/chat/completions",
                json=BODY,
                headers={"Authorization": f"Bearer {key}", "X-Request-ID": "shared-1"},
            )
            assert response.status_code == 200
            assert response.headers["x-request-id"] == "shared-1"  # the client's correlation id, kept
            assert response.json()["x_gateway"]["request_id"] == "shared-1"
            answers.append(response)
        ledger_ids = [r.headers["x-tollgate-ledger-id"] for r in answers]
        assert len(set(ledger_ids)) == 3, "every request has its own ledger id"
        assert [r.json()["x_gateway"]["ledger_id"] for r in answers] == ledger_ids

        mixed = (await http.get("/admin/events", params={"request_id": "shared-1"}, headers=ADMIN)).json()["data"]
        groups = by_aggregate(mixed)
        assert set(groups) == set(ledger_ids)  # grouped by ledger id, one group per request
        for ledger_id, tenant in zip(ledger_ids, ("demo", "other", "demo"), strict=True):
            events = groups[ledger_id]
            assert [e["type"] for e in events] == ["Request.Admitted", "Request.Completed"]
            assert {(e["tenant"], e["request_id"]) for e in events} == {(tenant, "shared-1")}

        other = await http.get("/admin/events", params={"request_id": "shared-1", "tenant": "other"}, headers=ADMIN)
        assert set(by_aggregate(other.json()["data"])) == {ledger_ids[1]}

        one = await http.get("/admin/events", params={"ledger_id": ledger_ids[2]}, headers=ADMIN)
        assert [(e["type"], e["tenant"]) for e in one.json()["data"]] == [
            ("Request.Admitted", "demo"),
            ("Request.Completed", "demo"),
        ]
        bad = await http.get("/admin/events", params={"ledger_id": "not-a-uuid"}, headers=ADMIN)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "ledger_id"


async def test_a_refused_request_names_its_ledger_id_and_an_unrecorded_one_none() -> None:
    async with running_gateway(two_tenants()) as gw, gw.http() as http:
        refused = await http.post(
            "/v1/chat/completions",
            json={**BODY, "model": "no-such-model"},
            headers={"Authorization": f"Bearer {DEMO_KEY}", "X-Request-ID": "shared-2"},
        )
        unknown_key = await http.post("/v1/chat/completions", json=BODY, headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 404
        ledger_id = refused.headers["x-tollgate-ledger-id"]
        found = (await http.get("/admin/events", params={"ledger_id": ledger_id}, headers=ADMIN)).json()["data"]
        assert [(e["type"], e["tenant"], e["request_id"]) for e in found] == [("Request.Rejected", "demo", "shared-2")]
        assert unknown_key.status_code == 401 and "x-tollgate-ledger-id" not in unknown_key.headers
