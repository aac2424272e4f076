"""The dashboard's pages over HTTP: the audit log's filters and paging, an unknown tenant."""

from __future__ import annotations

import html
import re

from events.request import Request
from tests.dashboard_workload import HistoryClock, run_history, run_workload, workload_config
from tests.harness import ADMIN_KEY, ledger_events, running_gateway
from tests.test_dashboard_session import session


async def test_the_audit_log_pages_through_every_matching_event_once() -> None:
    clock = HistoryClock()
    async with running_gateway(workload_config(), clock) as gw, gw.http() as http:
        keys = await run_workload(gw, http)
        await run_history(http, clock, keys)
        signed = await http.post("/dashboard/sign-in", data={"admin_key": ADMIN_KEY})
        http.cookies.clear()
        cookie = session(signed.cookies["tollgate_session"])
        events = await ledger_events(gw)
        completed = sum(isinstance(e, Request.Completed) for e in events)
        assert completed > 50  # more than one page
        shown: list[int] = []
        url = "/dashboard/audit?type=Completed"
        pages = 0
        while url:
            page = await http.get(url, headers=cookie)
            assert page.status_code == 200
            rows = re.findall(r'<tr data-position="(\d+)" data-type="([^"]+)"', page.text)
            assert rows and all(kind == "Request.Completed" for _, kind in rows)
            shown.extend(int(position) for position, _ in rows)
            found = re.search(r'id="next-page" href="([^"]+)"', page.text)
            url = html.unescape(found.group(1)).replace("?", "/dashboard/audit?", 1) if found else ""
            pages += 1
        assert pages == 2 and len(shown) == len(set(shown)) == completed
        assert shown == sorted(shown)

        mine = await http.get("/dashboard/audit?tenant=globex&type=Admitted", headers=cookie)
        rows = re.findall(r'<tr data-position="\d+" data-type="([^"]+)">.*?<td>([^<]*)</td><td>', mine.text)
        assert rows and all(kind == "Request.Admitted" for kind, _ in rows)
        assert len(rows) == sum(isinstance(e, Request.Admitted) and e.tenant == "globex" for e in events)
        request_id = next(e.request_id for e in events if isinstance(e, Request.Admitted) and e.tenant == "acme")
        one = await http.get(f"/dashboard/audit?request_id={request_id}", headers=cookie)
        kinds = re.findall(r'data-type="([^"]+)"', one.text)
        assert kinds == ["Request.Admitted", "Request.Completed"]

        unknown = await http.get("/dashboard/tenants/nobody", headers=cookie)
        assert unknown.status_code == 404 and "nobody" in unknown.text
