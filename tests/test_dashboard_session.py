"""The dashboard's sign-in, session cookie and CSRF checks, over HTTP against the real gateway."""

from __future__ import annotations

import re

import httpx

from runtime.auth import AdminKey
from runtime.http.dashboard import COOKIE, SESSION_S, Sessions
from tests.dashboard_workload import run_workload, workload_config
from tests.harness import ADMIN_KEY, ledger_events, running_gateway

DOUBLED = '"sim/sim-1" = { input_per_mtok = "20", output_per_mtok = "40" }'


async def sign_in(http: httpx.AsyncClient, key: str = ADMIN_KEY, **headers: str) -> httpx.Response:
    """POST the key; the client keeps no cookie (each test sends the one it means with `session`)."""
    response = await http.post("/dashboard/sign-in", data={"admin_key": key}, headers=headers)
    http.cookies.clear()
    return response


def session(value: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={value}"}


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def test_the_admin_key_once_gives_a_strict_short_lived_cookie_and_a_wrong_key_gives_none() -> None:
    async with running_gateway(workload_config()) as gw, gw.http() as http:
        refused = await sign_in(http, "tga-wrong")
        assert refused.status_code == 401 and "not the admin key" in refused.text
        assert "set-cookie" not in refused.headers
        signed = await sign_in(http)
        assert signed.status_code == 303 and signed.headers["location"] == "/dashboard/overview"
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=") and ADMIN_KEY not in cookie
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "max-age", "path"} <= attributes and "secure" not in attributes
        assert f"Max-Age={SESSION_S}" in cookie and "Path=/dashboard" in cookie and "SameSite=Strict" in cookie
        assert SESSION_S == 8 * 3600
        behind_tls = await sign_in(http, **{"X-Forwarded-Proto": "https"})
        assert "Secure" in behind_tls.headers["set-cookie"]
        page = await http.get("/dashboard/overview", headers=session(signed.cookies[COOKIE]))
        assert page.status_code == 200 and "Spend per day" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"


async def test_no_forged_tampered_or_foreign_session_gets_in() -> None:
    async with running_gateway(workload_config()) as gw, gw.http() as http:
        value = (await sign_in(http)).cookies[COOKIE]
        expiry, csrf, mac = value.split(".")
        foreign, _ = Sessions(AdminKey("tga-another-gateways-key").derive("tollgate-dashboard-session")).issue()
        for forged in (
            "",
            "garbage",
            f"{int(expiry) + 3600}.{csrf}.{mac}",  # a longer life, same mac
            f"{expiry}.{csrf}x.{mac}",
            f"{expiry}.{csrf}.{mac[:-1]}0" if mac[-1] != "0" else f"{expiry}.{csrf}.{mac[:-1]}1",
            foreign,  # signed with another admin key
        ):
            response = await http.get("/dashboard/overview", headers=session(forged))
            assert response.status_code == 303 and response.headers["location"] == "/dashboard", forged
        for path in ("/dashboard/tenants/acme", "/dashboard/providers", "/dashboard/audit", "/dashboard/reprice"):
            assert (await http.get(path)).status_code == 303, path


def test_a_session_expires() -> None:
    now = [1_000_000.0]
    sessions = Sessions(b"k" * 32, clock=lambda: now[0])
    value, csrf = sessions.issue()
    assert sessions.csrf(value) == csrf
    now[0] += SESSION_S - 1
    assert sessions.csrf(value) == csrf
    now[0] += 1
    assert sessions.csrf(value) is None


async def test_writes_need_the_sessions_csrf_token_and_a_confirmation() -> None:
    async with running_gateway(workload_config()) as gw, gw.http() as http:
        await run_workload(gw, http)
        cookie = session((await sign_in(http)).cookies[COOKIE])
        other = csrf_of(
            (await http.get("/dashboard/reprice", headers=session((await sign_in(http)).cookies[COOKIE]))).text
        )
        csrf = csrf_of((await http.get("/dashboard/reprice", headers=cookie)).text)
        assert other != csrf
        for token in (None, "", "nope", other):
            data = {"prices": DOUBLED} if token is None else {"prices": DOUBLED, "csrf": token}
            refused = await http.post("/dashboard/reprice", data=data, headers=cookie)
            assert refused.status_code == 403, token
        before = len(await ledger_events(gw))
        dry = await http.post("/dashboard/reprice", data={"prices": DOUBLED, "csrf": csrf}, headers=cookie)
        assert dry.status_code == 200 and 'id="commit"' in dry.text
        body = re.search(r'name="body" value="([^"]+)"', dry.text)
        fingerprint = re.search(r'name="fingerprint" value="([^"]+)"', dry.text)
        assert body and fingerprint
        form = {"csrf": csrf, "body": body.group(1).replace("&#34;", '"'), "fingerprint": fingerprint.group(1)}
        unconfirmed = await http.post("/dashboard/reprice/commit", data=form, headers=cookie)
        assert unconfirmed.status_code == 400 and "confirmation" in unconfirmed.text
        no_token = await http.post(
            "/dashboard/reprice/commit", data={**form, "confirm": "yes", "csrf": ""}, headers=cookie
        )
        assert no_token.status_code == 403
        changed = {**form, "confirm": "yes", "fingerprint": "another"}
        assert (await http.post("/dashboard/reprice/commit", data=changed, headers=cookie)).status_code == 409
        assert len(await ledger_events(gw)) == before, "nothing was written"
        done = await http.post("/dashboard/reprice/commit", data={**form, "confirm": "yes"}, headers=cookie)
        assert done.status_code == 200 and 'id="committed"' in done.text
        assert len(await ledger_events(gw)) > before


async def test_a_bad_price_set_is_shown_not_raised() -> None:
    async with running_gateway(workload_config()) as gw, gw.http() as http:
        cookie = session((await sign_in(http)).cookies[COOKIE])
        csrf = csrf_of((await http.get("/dashboard/reprice", headers=cookie)).text)
        for text, said in (
            ("", "Enter or upload a price set"),
            ("this is = not toml [", "not valid TOML or JSON"),
            ('"sim-1" = { input_per_mtok = "1", output_per_mtok = "2" }', "PROVIDER/MODEL"),
        ):
            shown = await http.post("/dashboard/reprice", data={"prices": text, "csrf": csrf}, headers=cookie)
            assert shown.status_code == 400 and said in shown.text, text
        upload = await http.post(
            "/dashboard/reprice",
            data={"prices": "", "csrf": csrf},
            files={"prices_file": ("prices.toml", f"[pricing]\n{DOUBLED}\n".encode())},
            headers=cookie,
        )
        assert upload.status_code == 200 and 'id="delta-total"' in upload.text


async def test_sign_out_ends_the_session_in_this_browser() -> None:
    async with running_gateway(workload_config()) as gw, gw.http() as http:
        cookie = session((await sign_in(http)).cookies[COOKIE])
        csrf = csrf_of((await http.get("/dashboard/overview", headers=cookie)).text)
        assert (await http.post("/dashboard/sign-out", data={}, headers=cookie)).status_code == 403
        out = await http.post("/dashboard/sign-out", data={"csrf": csrf}, headers=cookie)
        assert out.status_code == 303 and out.headers["location"] == "/dashboard"
        assert f'{COOKIE}=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
