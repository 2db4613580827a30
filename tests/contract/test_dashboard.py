"""The HITL page over HTTP (both DBs): sign-in, CSRF, escaping, tenant isolation, decisions."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from handoffrail_server.api.roles import Role
from tests.conftest import Api, LiveServer, packet_body
from tests.contract.helpers import P, create_packet, get_packet

HITL: dict[str, Any] = {
    "required": True,
    "reason": "Refund above the agent's limit",
    "question": "Refund 120 EUR?",
    "options": ["approve", "reject"],
}
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
SCRIPT_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
IMG_ESCAPED = "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"
_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


@dataclass
class Key:
    """A key made through the API: its id, name and plain value."""

    id: str
    name: str
    plain: str


async def make_key(api: Api, role: Role, tenant_id: str | None = None) -> Key:
    """A named key of `role` (in `tenant_id`, or the operator's tenant)."""
    name = f"reviewer-{role.value}"
    body: dict[str, Any] = {"name": name, "role": role.value}
    if tenant_id:
        body["tenant_id"] = tenant_id
    response = await api.client.post(f"{P}/keys", json=body, headers=api.headers())
    assert response.status_code == 201, response.text
    data = response.json()
    return Key(str(data["id"]), name, str(data["key"]))


@pytest.fixture
async def browser(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    """A cookie-keeping client of the same app (no API key header), like a browser."""
    transport = httpx.ASGITransport(app=api.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def csrf_of(html: str) -> str:
    """The first CSRF hidden field of a page."""
    match = _CSRF.search(html)
    assert match is not None, html
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    """Load the form, then POST the key with the form's CSRF token."""
    form = await client.get("/dashboard")
    assert form.status_code == 200, form.text
    return await client.post(
        "/dashboard/session", data={"api_key": key, "csrf_token": csrf_of(form.text)}
    )


async def page_csrf(client: httpx.AsyncClient, path: str) -> str:
    """The CSRF token on a signed-in page."""
    response = await client.get(path)
    assert response.status_code == 200, response.text
    return csrf_of(response.text)


async def decide(
    client: httpx.AsyncClient, packet_id: str, action: str, **fields: str
) -> httpx.Response:
    """POST a decision with the session's CSRF token."""
    token = await page_csrf(client, f"/dashboard/packets/{packet_id}")
    data = {"csrf_token": token, "action": action, **fields}
    return await client.post(f"/dashboard/packets/{packet_id}/respond", data=data)


async def test_sign_in_sets_a_signed_cookie_and_never_echoes_the_key(
    api: Api, browser: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    key = await make_key(api, Role.AGENT)
    form = await browser.get("/dashboard")
    csp = form.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "default-src 'none'" in csp
    response = await sign_in(browser, key.plain)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/inbox"
    set_cookie = response.headers["set-cookie"]
    assert "hr_dashboard=" in set_cookie
    lowered = set_cookie.lower()
    assert "httponly" in lowered
    assert "samesite=strict" in lowered
    assert "path=/dashboard" in lowered
    assert "secure" not in lowered  # plain http here; see the https test
    inbox = await browser.get("/dashboard/inbox")
    assert inbox.status_code == 200
    assert key.name in inbox.text
    for seen in (response, inbox):
        assert key.plain not in str(seen.url)
        assert key.plain not in seen.text
        assert key.plain not in str(seen.headers)
    for value in browser.cookies.values():
        assert key.plain not in value
    assert key.plain not in capsys.readouterr().out
    # Already signed in: the form page goes straight to the inbox.
    again = await browser.get("/dashboard")
    assert again.status_code == 303
    assert again.headers["location"] == "/dashboard/inbox"


async def test_cookie_is_secure_over_https(api: Api) -> None:
    key = await make_key(api, Role.READER)
    transport = httpx.ASGITransport(app=api.app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        response = await sign_in(client, key.plain)
    assert response.status_code == 303
    assert "secure" in response.headers["set-cookie"].lower()


async def test_links_redirects_and_cookies_stay_below_a_root_path(api: Api) -> None:
    """Behind a proxy prefix (`--root-path /hr`) every link, form, redirect and cookie of the
    dashboard carries the prefix; a browser would otherwise leave the app or drop the cookie."""
    key = await make_key(api, Role.AGENT)
    transport = httpx.ASGITransport(app=api.app, root_path="/hr")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        form = await client.get("/hr/dashboard")
        assert form.status_code == 200, form.text
        for expected in (
            'action="/hr/dashboard/session"',
            'href="/hr/dashboard/static/dashboard.css"',
            'src="/hr/dashboard/static/dashboard.js"',
            'data-base="/hr/dashboard"',  # the live stream's URL in dashboard.js
        ):
            assert expected in form.text
        signed_in = await client.post(
            "/hr/dashboard/session", data={"api_key": key.plain, "csrf_token": csrf_of(form.text)}
        )
        assert signed_in.status_code == 303, signed_in.text
        assert signed_in.headers["location"] == "/hr/dashboard/inbox"
        assert "path=/hr/dashboard" in signed_in.headers["set-cookie"].lower()
        inbox = await client.get("/hr/dashboard/inbox")
        assert inbox.status_code == 200
        assert 'href="/hr/dashboard/inbox"' in inbox.text
        assert '"/dashboard' not in inbox.text


async def test_bad_key_shows_the_form_again_with_an_error(
    api: Api, browser: httpx.AsyncClient
) -> None:
    wrong = "hr_live_" + "x" * 40
    response = await sign_in(browser, wrong)
    assert response.status_code == 401
    assert "That API key is not valid." in response.text
    assert 'action="/dashboard/session"' in response.text
    assert wrong not in response.text
    assert "hr_dashboard" not in browser.cookies
    inbox = await browser.get("/dashboard/inbox")
    assert inbox.status_code == 303
    assert inbox.headers["location"] == "/dashboard"


async def test_csrf_missing_or_wrong_is_refused(api: Api, browser: httpx.AsyncClient) -> None:
    key = await make_key(api, Role.AGENT)
    await browser.get("/dashboard")
    for data in (
        {"api_key": key.plain},
        {"api_key": key.plain, "csrf_token": "forged"},
        {"api_key": key.plain, "csrf_token": "\u00e9"},
    ):
        refused = await browser.post("/dashboard/session", data=data)
        assert refused.status_code == 403
        assert "hr_dashboard" not in browser.cookies
    assert (await sign_in(browser, key.plain)).status_code == 303
    packet = await create_packet(api, hitl=HITL)
    url = f"/dashboard/packets/{packet['id']}/respond"
    for data in (
        {"action": "approve"},
        {"action": "approve", "csrf_token": "forged"},
        {"action": "approve", "csrf_token": "f\u00f6rged \u2603"},  # non-ASCII: 403, not 500
    ):
        refused = await browser.post(url, data=data)
        assert refused.status_code == 403
        assert "CSRF" in refused.text
    # JSON or multipart bodies carry no form token either.
    assert (await browser.post(url, json={"action": "approve"})).status_code == 403
    assert (await get_packet(api, packet["id"]))["status"] == "awaiting_human"
    assert (await browser.post("/dashboard/signout", data={})).status_code == 403
    assert (await browser.get("/dashboard/inbox")).status_code == 200


async def test_packet_content_is_escaped_everywhere(api: Api, browser: httpx.AsyncClient) -> None:
    key = await make_key(api, Role.AGENT)
    hostile = f"{SCRIPT} and {IMG}"
    body = packet_body(
        hostile,
        source="x" + IMG,
        tags=[SCRIPT],
        hitl={
            "required": True,
            "reason": hostile,
            "question": hostile,
            "options": [SCRIPT, IMG],
        },
    )
    body["context"] = {
        "summary": hostile,
        "conversation_state": [{"role": "user", "content": hostile}],
        "artifacts": [{"key": SCRIPT, "value": IMG}],
    }
    body["decisions"] = [{"id": "d1", "decision": SCRIPT, "rationale": IMG, "alternatives": [IMG]}]
    packet = await create_packet(api, body=body)
    await sign_in(browser, key.plain)
    for path in ("/dashboard/inbox", f"/dashboard/packets/{packet['id']}"):
        page = await browser.get(path)
        assert page.status_code == 200
        assert SCRIPT not in page.text
        assert "<img" not in page.text
        assert "onerror=alert(1)>" not in page.text
        assert SCRIPT_ESCAPED in page.text
        # the only script element is the page's own static file
        assert page.text.count("<script") == 1
        assert '<script src="/dashboard/static/dashboard.js" defer></script>' in page.text
    detail = await browser.get(f"/dashboard/packets/{packet['id']}")
    assert IMG_ESCAPED in detail.text
    assert detail.text.count(SCRIPT_ESCAPED) >= 6  # summary, turn, question, reason, options, ...


async def test_other_tenants_packet_is_a_404_page(api: Api, browser: httpx.AsyncClient) -> None:
    a_tenant, a_key = await api.new_tenant_admin()
    b_tenant, _b_admin = await api.new_tenant_admin()
    b_key = await make_key(api, Role.ADMIN, b_tenant)
    a_packet = await create_packet(api, a_key, summary="zebracorn merger secret", hitl=HITL)
    await sign_in(browser, b_key.plain)
    inbox = await browser.get("/dashboard/inbox")
    assert "zebracorn" not in inbox.text
    assert a_packet["id"] not in inbox.text
    page = await browser.get(f"/dashboard/packets/{a_packet['id']}")
    assert page.status_code == 404
    assert "zebracorn" not in page.text
    token = csrf_of(inbox.text)
    refused = await browser.post(
        f"/dashboard/packets/{a_packet['id']}/respond",
        data={"csrf_token": token, "action": "approve"},
    )
    assert refused.status_code == 404
    assert (await get_packet(api, a_packet["id"], a_key))["status"] == "awaiting_human"
    assert (await browser.get("/dashboard/packets/not-a-uuid")).status_code == 404
    assert a_tenant != b_tenant


async def test_approve_reject_and_edit_use_the_respond_use_case(
    api: Api, browser: httpx.AsyncClient
) -> None:
    key = await make_key(api, Role.AGENT)
    first = await create_packet(api, summary="first waiting", hitl=HITL)
    second = await create_packet(api, summary="second waiting", hitl=HITL)
    third = await create_packet(api, summary="third waiting", hitl=HITL)
    await sign_in(browser, key.plain)
    inbox = await browser.get("/dashboard/inbox")
    ids = re.findall(r'data-packet-id="([^"]+)"', inbox.text)
    assert ids == [first["id"], second["id"], third["id"]]  # oldest first

    approved = await decide(browser, first["id"], "approve", comment="ok <b>go</b>")
    assert approved.status_code == 303
    assert approved.headers["location"] == "/dashboard/inbox"
    packet = await get_packet(api, first["id"])
    assert packet["status"] == "claimed"
    assert packet["hitl"]["response"] == "approved"
    assert packet["hitl"]["responded_by"] == key.name
    assert packet["hitl"]["notes"] == "ok <b>go</b>"

    assert (await decide(browser, second["id"], "reject")).status_code == 303
    packet = await get_packet(api, second["id"])
    assert (packet["status"], packet["hitl"]["response"]) == ("claimed", "rejected")
    assert packet["hitl"]["notes"] is None

    edited = await decide(browser, third["id"], "edit", summary="  edited by a human ", comment="x")
    assert edited.status_code == 303
    packet = await get_packet(api, third["id"])
    assert packet["context"]["summary"] == "edited by a human"
    assert (packet["status"], packet["hitl"]["response"]) == ("claimed", "approved")

    inbox = await browser.get("/dashboard/inbox")
    assert re.findall(r'data-packet-id="([^"]+)"', inbox.text) == []
    assert "Nothing awaits a human." in inbox.text
    # Answering twice is a conflict page; the packet keeps the first answer.
    token = csrf_of(inbox.text)
    again = await browser.post(
        f"/dashboard/packets/{first['id']}/respond", data={"csrf_token": token, "action": "reject"}
    )
    assert again.status_code == 409
    assert (await get_packet(api, first["id"]))["hitl"]["response"] == "approved"


async def test_failed_response_rolls_back_an_edit(api: Api, browser: httpx.AsyncClient) -> None:
    key = await make_key(api, Role.AGENT)
    packet = await create_packet(api, summary="original", hitl=HITL)
    await sign_in(browser, key.plain)
    token = await page_csrf(browser, f"/dashboard/packets/{packet['id']}")
    answered = await api.client.post(
        f"{P}/packets/{packet['id']}/respond",
        json={"response": "approved", "responded_by": "someone-else"},
        headers=api.headers(key.plain),
    )
    assert answered.status_code == 200
    late = await browser.post(
        f"/dashboard/packets/{packet['id']}/respond",
        data={"csrf_token": token, "action": "edit", "summary": "too late"},
    )
    assert late.status_code == 409
    after = await get_packet(api, packet["id"])
    assert after["context"]["summary"] == "original"
    assert after["hitl"]["responded_by"] == "someone-else"


async def test_reader_may_view_but_not_act(api: Api, browser: httpx.AsyncClient) -> None:
    writer = await make_key(api, Role.WRITER)
    reader = await make_key(api, Role.READER)
    packet = await create_packet(api, writer.plain, summary="look only", hitl=HITL)
    await sign_in(browser, reader.plain)
    detail = await browser.get(f"/dashboard/packets/{packet['id']}")
    assert detail.status_code == 200
    assert "look only" in detail.text
    assert 'id="approve"' not in detail.text
    refused = await decide(browser, packet["id"], "approve")
    assert refused.status_code == 403
    assert (await get_packet(api, packet["id"]))["status"] == "awaiting_human"


async def test_revoked_key_ends_the_session_and_sign_out_clears_it(
    api: Api, browser: httpx.AsyncClient
) -> None:
    key = await make_key(api, Role.AGENT)
    await sign_in(browser, key.plain)
    assert (await browser.get("/dashboard/inbox")).status_code == 200
    revoked = await api.client.delete(f"{P}/keys/{key.id}", headers=api.headers())
    assert revoked.status_code == 204
    after = await browser.get("/dashboard/inbox")
    assert after.status_code == 303
    assert after.headers["location"] == "/dashboard"
    assert "hr_dashboard" not in browser.cookies  # the redirect cleared the cookie
    assert (await sign_in(browser, key.plain)).status_code == 401

    other = await make_key(api, Role.AGENT)
    await sign_in(browser, other.plain)
    token = await page_csrf(browser, "/dashboard/inbox")
    out = await browser.post("/dashboard/signout", data={"csrf_token": token})
    assert out.status_code == 303
    assert "hr_dashboard" not in browser.cookies
    assert (await browser.get("/dashboard/inbox")).status_code == 303


async def test_tampered_cookie_and_unsigned_stream_are_refused(
    api: Api, browser: httpx.AsyncClient
) -> None:
    key = await make_key(api, Role.AGENT)
    await sign_in(browser, key.plain)
    token = browser.cookies["hr_dashboard"]
    body, _mac = token.split(".")
    browser.cookies.clear()
    browser.cookies.set("hr_dashboard", f"{body}.AAAA", path="/dashboard")
    assert (await browser.get("/dashboard/inbox")).status_code == 303
    browser.cookies.clear()
    assert (await browser.get("/dashboard/events")).status_code == 401
    script = await browser.get("/dashboard/static/dashboard.js")
    assert script.status_code == 200
    assert "EventSource" in script.text
    assert (await browser.get("/dashboard/static/..%2Fauth.py")).status_code == 404


def test_event_stream_follows_the_session_tenant(live_server: LiveServer) -> None:
    """Over real HTTP: the dashboard's SSE proxy carries the tenant's packet events."""
    base, headers = live_server.base_url, {"X-API-Key": live_server.operator_key}
    with httpx.Client(base_url=base, timeout=10) as api, httpx.Client(base_url=base) as browser:
        packet = api.post(f"{P}/packets", json=packet_body(hitl=HITL), headers=headers).json()
        form = browser.get("/dashboard")
        signed = browser.post(
            "/dashboard/session",
            data={"api_key": live_server.operator_key, "csrf_token": csrf_of(form.text)},
        )
        assert signed.status_code == 303
        seen: list[str] = []
        connected = threading.Event()

        def respond_when_connected() -> None:
            assert connected.wait(10)
            time.sleep(0.2)
            api.post(
                f"{P}/packets/{packet['id']}/respond",
                json={"response": "approved", "responded_by": "api"},
                headers=headers,
            )

        worker = threading.Thread(target=respond_when_connected)
        worker.start()
        with browser.stream("GET", "/dashboard/events", timeout=10) as stream:
            assert stream.status_code == 200
            for line in stream.iter_lines():
                if line.startswith("event: connected"):
                    connected.set()
                if line.startswith("data:") and packet["id"] in line:
                    seen.append(line)
                    if '"claimed"' in line:
                        break
        worker.join()
        assert any('"status": "claimed"' in line for line in seen), seen
