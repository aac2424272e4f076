"""A tenant policy names providers and models; the admin API and `check-config` refuse the same
unknown names (one check, `policies.tenant.reference_problems`)."""

from __future__ import annotations

from typing import Any

import pytest

from events.tenant import Tenant
from runtime.auth import hash_key
from runtime.config import ConfigError, parse_config
from tests.harness import ADMIN, ledger_events, make_config, running_gateway

PROVIDERS = [
    {"name": "sim", "kind": "simulator", "models": ["sim-1"]},
    {"name": "sim2", "kind": "simulator", "models": ["sim-1", "sim-2"]},
]
ALIASES = {"fast": {"deployments": [{"provider": "sim2", "model": "sim-2"}]}}
BAD = [
    ({"default_provider": "nowhere"}, "default_provider", "no provider named 'nowhere'"),
    ({"fallback_providers": ["sim", "ghost"]}, "fallback_providers", "no provider named 'ghost'"),
    ({"allowed_models": ["sim-1", "gpt-9"]}, "allowed_models", "no model named 'gpt-9'"),
    ({"allowed_models": ["ghost/sim-1"]}, "allowed_models", "no model named 'ghost/sim-1'"),
]
GOOD: dict[str, Any] = {
    "default_provider": "sim2",
    "fallback_providers": ["sim"],
    "allowed_models": ["sim-1", "fast", "sim2/any-model"],  # served, an alias, PROVIDER/MODEL
}


@pytest.mark.parametrize(("fields", "param", "problem"), BAD)
async def test_create_and_patch_refuse_unknown_providers_and_models(
    fields: dict[str, Any], param: str, problem: str
) -> None:
    async with running_gateway(make_config(providers=PROVIDERS, models=ALIASES)) as gw, gw.http() as http:
        created = await http.post("/admin/tenants", json={"name": "acme", **fields}, headers=ADMIN)
        assert created.status_code == 400, created.text
        error = created.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_value", param)
        assert problem in error["message"]
        assert (await http.get("/admin/tenants/acme", headers=ADMIN)).status_code == 404

        tenant = (await http.post("/admin/tenants", json={"name": "acme", **GOOD}, headers=ADMIN)).json()
        patched = await http.patch(f"/admin/tenants/{tenant['id']}", json=fields, headers=ADMIN)
        assert patched.status_code == 400, patched.text
        assert patched.json()["error"]["param"] == param and problem in patched.json()["error"]["message"]
        shown = (await http.get(f"/admin/tenants/{tenant['id']}", headers=ADMIN)).json()
        assert {k: shown[k] for k in GOOD} == GOOD, "a refused PATCH changes nothing"
        events = await ledger_events(gw)
    assert [type(e).__qualname__ for e in events if isinstance(e, Tenant.Event)].count("Tenant.Updated") == 0


async def test_known_names_and_clearing_are_accepted() -> None:
    async with running_gateway(make_config(providers=PROVIDERS, models=ALIASES)) as gw, gw.http() as http:
        created = await http.post("/admin/tenants", json={"name": "acme", **GOOD}, headers=ADMIN)
        assert created.status_code == 201, created.text
        cleared = await http.patch(
            "/admin/tenants/acme",
            json={"default_provider": None, "fallback_providers": [], "allowed_models": []},
            headers=ADMIN,
        )
        assert cleared.status_code == 200, cleared.text
        assert (cleared.json()["default_provider"], cleared.json()["allowed_models"]) == (None, [])


@pytest.mark.parametrize(("fields", "param", "problem"), BAD)
def test_check_config_refuses_the_same(fields: dict[str, Any], param: str, problem: str) -> None:
    tenant = {"name": "t", "api_key_sha256": hash_key("k"), **fields}
    data = {"providers": PROVIDERS, "models": ALIASES, "tenants": [tenant]}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, {})
    [only] = caught.value.problems
    assert only.startswith(f"tenants[0].{param}: {problem}")
    assert parse_config({**data, "tenants": [{**tenant, **GOOD}]}, {}).tenants[0].default_provider == "sim2"
