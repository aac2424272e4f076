"""`GET /v1/models` and `GET /v1/models/{id}` (the SDK's `models.list` and `models.retrieve`)."""

from __future__ import annotations

import openai
import pytest

from runtime.auth import DEMO_KEY
from tests.harness import ADMIN, in_thread, make_config, running_gateway

PROVIDERS = [{"name": "sim", "kind": "simulator", "models": ["sim-1", "sim-2"]}]
ALIASES = {"team/fast": {"deployments": [{"provider": "sim", "model": "sim-2"}]}}


async def test_retrieve_answers_served_and_allowed_models() -> None:
    async with running_gateway(make_config(providers=PROVIDERS, models=ALIASES)) as gw, gw.http() as http:
        client = gw.client()
        for name in ("sim-1", "team/fast", "sim/sim-2"):  # a listed name, an alias with a '/', PROVIDER/MODEL
            model = await in_thread(client.models.retrieve, name)
            assert (model.id, model.object, model.created, model.owned_by) == (name, "model", 0, "tollgate")
        listed = (await http.get("/v1/models", headers={"Authorization": f"Bearer {DEMO_KEY}"})).json()["data"]
        raw = await http.get("/v1/models/team/fast", headers={"Authorization": f"Bearer {DEMO_KEY}"})
        assert raw.status_code == 200 and raw.json() == next(m for m in listed if m["id"] == "team/fast")

        with pytest.raises(openai.NotFoundError) as unknown:
            await in_thread(client.models.retrieve, "gpt-nope")
        assert unknown.value.body == {
            "message": "The model 'gpt-nope' does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }

        limited = await http.post("/admin/tenants", json={"name": "lim", "allowed_models": ["sim-1"]}, headers=ADMIN)
        limited_client = gw.client(key=limited.json()["api_key"])
        assert (await in_thread(limited_client.models.retrieve, "sim-1")).id == "sim-1"
        for name in ("sim-2", "team/fast"):
            with pytest.raises(openai.NotFoundError) as hidden:
                await in_thread(limited_client.models.retrieve, name)
            assert hidden.value.code == "model_not_found" and name in hidden.value.message

        with pytest.raises(openai.AuthenticationError):
            await in_thread(gw.client(key="tg-unknown").models.retrieve, "sim-1")
