"""The HITL page in a real browser: Debian's headless Chromium driven by Playwright.

Signs in through the form, opens a packet, approves it and watches it leave the inbox, both by
the redirect and live (SSE) in a second tab; then a packet resolved through the API disappears
live too. Screenshots go to `artifacts/` (HR_ARTIFACTS_DIR) for CI to keep. Never runs
`playwright install`: the system browser is used. Without /usr/bin/chromium the test skips
locally and fails under CI (`make browser` installs it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IN_CI, LiveServer, packet_body

CHROMIUM = Path(os.environ.get("HR_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("HR_ARTIFACTS_DIR", Path(__file__).parents[2] / "artifacts"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
HITL = {"required": True, "reason": "Refund above the agent's limit", "question": "Refund 120?"}
TIMEOUT_MS = 15_000

#: one backend is enough here: the contract tests cover the page on both databases
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def chromium() -> Iterator[Any]:
    """A headless system Chromium, or skip (locally) / fail (CI) when it is absent."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found (apt-get install chromium, or `make browser`)"
        if IN_CI:
            pytest.fail(message + "; CI must run the browser test")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def _create(api: httpx.Client, summary: str) -> str:
    response = api.post("/api/v1/packets", json=packet_body(summary, hitl=HITL))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _row(page: Any, packet_id: str) -> Any:
    return page.locator(f'#inbox tr[data-packet-id="{packet_id}"]')


def test_sign_in_approve_and_watch_packets_leave_the_inbox(
    live_server: LiveServer, chromium: Any
) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    headers = {"X-API-Key": live_server.operator_key}
    with httpx.Client(base_url=live_server.base_url, headers=headers, timeout=10) as api:
        made = api.post("/api/v1/keys", json={"name": "browser-reviewer", "role": "agent"})
        assert made.status_code == 201, made.text
        reviewer_key = str(made.json()["key"])
        first = _create(api, "Customer wants a refund for order 1234")
        second = _create(api, "Second refund, resolved by an agent over the API")

        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        urls: list[str] = []
        problems: list[str] = []
        context.on("request", lambda request: urls.append(request.url))
        context.on(
            "response",
            lambda response: (
                problems.append(f"{response.status} {response.url}")
                if response.status >= 400
                else None
            ),
        )
        page = context.new_page()
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))

        # Sign in through the form.
        page.goto(f"{live_server.base_url}/dashboard")
        page.fill("#api_key", reviewer_key)
        page.click("#signin button[type=submit]")
        page.wait_for_url("**/dashboard/inbox")
        expect(_row(page, first)).to_be_visible()
        expect(_row(page, second)).to_be_visible()
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # A second tab follows the inbox live while the first one decides.
        watcher = context.new_page()
        watcher.goto(f"{live_server.base_url}/dashboard/inbox")
        expect(watcher.locator("#live-status")).to_have_attribute("data-state", "open")
        expect(_row(watcher, first)).to_be_visible()

        # Open the packet and approve it.
        _row(page, first).locator("a").click()
        page.wait_for_url(f"**/dashboard/packets/{first}")
        expect(page.locator("#question")).to_have_text("Refund 120?")
        page.fill("#comment", "approved in the browser test")
        page.screenshot(path=str(ARTIFACTS / "dashboard-packet.png"), full_page=True)
        page.click("#approve")
        page.wait_for_url("**/dashboard/inbox")
        expect(_row(page, first)).to_have_count(0)
        expect(_row(page, second)).to_be_visible()
        # ... and it left the other tab's list without a reload (SSE).
        expect(_row(watcher, first)).to_have_count(0)
        expect(_row(watcher, second)).to_be_visible()

        packet = api.get(f"/api/v1/packets/{first}").json()
        assert packet["status"] == "claimed"
        assert packet["hitl"]["response"] == "approved"
        assert packet["hitl"]["responded_by"] == "browser-reviewer"
        assert packet["hitl"]["notes"] == "approved in the browser test"

        # A packet resolved through the API leaves the open inbox live as well.
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
        answered = api.post(
            f"/api/v1/packets/{second}/respond",
            json={"response": "rejected", "responded_by": "api-agent"},
        )
        assert answered.status_code == 200, answered.text
        expect(_row(page, second)).to_have_count(0)
        expect(page.locator("#empty")).to_be_visible()
        expect(page.locator("#count")).to_have_text("0")
        page.screenshot(path=str(ARTIFACTS / "dashboard-empty.png"), full_page=True)

        # Sign out: the inbox then sends the browser back to the form.
        page.click("#signout")
        page.wait_for_url("**/dashboard")
        page.goto(f"{live_server.base_url}/dashboard/inbox")
        page.wait_for_url("**/dashboard")
        expect(page.locator("#api_key")).to_be_visible()
        context.close()

    assert all(reviewer_key not in url for url in urls), urls
    assert problems == [], problems  # no CSP violations or script errors
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 0
