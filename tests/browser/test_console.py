"""The browser console in a real browser: Debian's chromium, driven by Playwright, against a
real ``callvault serve`` (subprocess, its AI worker child, the packaged tiny.en model).

What a tenant admin does: sign in with a token, set the instructions (a refused value is
shown at its field, 422), a PBX pushes a call (the test helpers, over a real WebSocket),
the recording page shows it reach ``analyzed``, the audio element loads and reports the
call's duration, a transcript line seeks the player, a legal hold is placed and the
recording's erasure is then refused, the audit log verifies, sign-out ends the session.
What others cannot do: a processor sees no audio control and is refused the audio URL; an
admin of another tenant gets 404 for the recording's page; a form posted without its CSRF
token is refused and changes nothing.

Every page visited is saved as a screenshot under ``test-artifacts/console/`` (see
``conftest.artifacts_dir``), the test artifacts the closing notes describe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.ai import sample_call
from tests.browser.conftest import artifacts_dir
from tests.gateway import Server, bearer, serve
from tests.served import push_call, tenant

pytestmark = pytest.mark.integration

T = TypeVar("T")
WAIT_MS = 90_000
"""How long a page may take to show the AI worker's result (tiny.en on a loaded CI core)."""
LOADED = "p => p.duration > 0 || new Promise(done => p.addEventListener('loadedmetadata', done))"
"""Waits until the player knows the audio's length (run in Playwright's own world: the
console's CSP forbids a page to evaluate strings, which ``wait_for_function`` does)."""
AI = {
    "CALLVAULT_AI__MODEL": "tiny.en",
    "CALLVAULT_AI__WORKERS": "1",
    "CALLVAULT_AI__POLL_INTERVAL": "PT0.2S",
}


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run an asyncio helper (the PBX's side) beside Playwright's own loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _setup(server: Server, name: str, instructions: dict[str, Any]) -> dict[str, str]:
    async with aiohttp.ClientSession(server.base) as session:
        return await tenant(session, server, name, instructions)


async def _push(server: Server, tenant_id: str, pbx: str) -> str:
    call = sample_call("support")
    async with aiohttp.ClientSession(server.base) as session:
        return await push_call(session, tenant_id, pbx, call.inbound, call.outbound)


async def _status(server: Server, path: str, token: str | None) -> int:
    headers = bearer(token) if token else {}
    async with aiohttp.ClientSession(server.base) as session:
        async with session.get(path, headers=headers) as response:
            return response.status


class Shots:
    """Screenshots of every page a test visits, numbered in the order visited."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0

    def take(self, page: Page, name: str) -> None:
        self.count += 1
        page.screenshot(path=self.folder / f"{self.count:02d}-{name}.png", full_page=True)


def sign_in(page: Page, base: str, token: str) -> None:
    page.goto(f"{base}/console/")
    expect(page).to_have_url(f"{base}/console/sign-in?next=/console/")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def test_an_admin_works_a_call_through_the_console(tmp_path: Path, browser: Browser) -> None:
    shots = Shots(artifacts_dir("console"))
    with serve(tmp_path, "var", **AI) as server:
        tokens = run(_setup(server, "acme", {}))
        context = browser.new_context(base_url=server.base)
        page = context.new_page()
        base = server.base

        sign_in(page, base, tokens["admin"])
        shots.take(page, "sign-in-done")
        assert f"callvault console: {base}/console/" in server.process.log()  # make run shows it
        expect(page).to_have_url(f"{base}/console/recordings")
        cookie = next(c for c in context.cookies() if c["name"] == "callvault_console")
        assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
        assert tokens["admin"] not in str(context.cookies())

        # Instructions: a refused value is shown at its field (the API's 422), nothing stored.
        page.get_by_role("link", name="Instructions").click()
        page.get_by_label("Record call audio").check()
        page.get_by_label("Recordings (audio)").fill("ninety days")
        page.get_by_role("button", name="Save a new version").click()
        field = page.locator('[id="retention.recordings"]')
        expect(field).to_have_attribute("aria-invalid", "true")
        expect(page.locator('[id="error-retention.recordings"]')).to_contain_text("ISO-8601")
        expect(page.get_by_label("Record call audio")).to_be_checked()  # the form kept
        shots.take(page, "instructions-422")
        field.fill("P30D")
        for label in ("Transcript", "Summary", "Sentiment", "Talk/listen", "Topics"):
            page.get_by_label(label, exact=True).check()
        page.get_by_label("Categories, one phrase per line").fill(
            "billing: refund\nbilling: invoice, please"
        )
        page.get_by_role("button", name="Save a new version").click()
        expect(page.locator("#saved")).to_have_text("Saved as version 2.")  # 1: the all-off set-up
        page.get_by_role("link", name="What changed in version 2").click()
        expect(page.locator("table.diff")).to_contain_text("retention.recordings")
        expect(page.locator("table.diff")).to_contain_text("P30D")
        expect(page.locator("table.diff")).to_contain_text("refund, invoice, please")
        shots.take(page, "instructions-diff")

        # A PBX pushes a call; the recording page shows it reach "analyzed".
        recording_id = run(_push(server, "acme", tokens["pbx"]))
        page.goto(f"{base}/console/recordings")
        page.get_by_role("link", name="20").first.click()  # its start time, 2026-...
        expect(page).to_have_url(f"{base}/console/recordings/{recording_id}")
        status = page.locator("#status")
        for _ in range(WAIT_MS // 500):
            if status.inner_text() in ("analyzed", "failed"):
                break
            page.wait_for_timeout(500)  # the AI worker is another process
            page.reload()
        expect(status).to_have_text("analyzed")
        shots.take(page, "recording")
        expect(page.locator("#sentiment-chart polyline")).to_have_count(2)  # one per speaker
        expect(page.locator("#talk-chart rect")).to_have_count(2)
        expect(page.locator("#categories")).to_be_visible()

        # Played, the audio element loads the WAV export and reports the call's duration.
        player = page.locator("#player")
        assert player.evaluate("p => p.preload") == "none"  # a view is not an audio read
        player.evaluate("p => p.play()")
        page.locator("#player").evaluate(LOADED)
        duration = player.evaluate("p => p.duration")
        call = sample_call("support")
        assert duration == pytest.approx(len(call.inbound) / 8000, abs=0.5)

        # A transcript line seeks the player to its start.
        lines = page.locator("button.seek")
        assert lines.count() >= 2
        target = lines.nth(lines.count() - 1)
        start = float(target.get_attribute("data-start") or "nan")
        assert start > 1.0
        target.focus()  # by keyboard: the line's time is a button
        page.keyboard.press("Enter")
        expect(page.locator(".transcript li.current")).to_have_count(1)
        position = player.evaluate("p => p.currentTime")
        assert position == pytest.approx(start, abs=1.0)
        shots.take(page, "recording-seeked")

        # A legal hold on the call, then the recording's erasure is refused.
        call_id = page.locator("dd code").first.inner_text()
        page.get_by_role("link", name="Place a hold on this call").click()
        expect(page.get_by_label("Or call ids")).to_have_value(call_id)
        page.get_by_label("Reason").fill("litigation 2026/17")
        page.get_by_role("button", name="Place the hold").click()
        expect(page.locator("#holds")).to_contain_text("litigation 2026/17")
        shots.take(page, "holds")
        page.goto(f"{base}/console/recordings/{recording_id}")
        expect(page.locator("#legal-hold")).to_contain_text("held")
        expect(page.locator("#holds-here")).to_contain_text("litigation 2026/17")
        page.get_by_role("link", name="Erase this recording…").click()
        shots.take(page, "erase-confirm")
        page.get_by_role("button", name="Erase this recording").click()
        expect(page.locator("#refusal")).to_contain_text("hold")
        shots.take(page, "erase-refused")

        # Erasure by number: the confirmation step lists what would go.
        page.get_by_role("link", name="Erasure & export").click()
        page.get_by_label("Number").fill("+40711111111")
        page.get_by_role("button", name="Show their recordings").click()
        expect(page.locator("table")).to_contain_text(recording_id)
        shots.take(page, "erasure-confirm")

        # The audit log: the chain verifies, and the page filters by action.
        page.get_by_role("link", name="Audit").click()
        expect(page.locator("#verify")).to_contain_text("Chain verified")
        page.get_by_label("Action").select_option("audio.read")
        page.get_by_role("button", name="Show").click()
        expect(page.locator("#events tbody tr")).not_to_have_count(0)
        for action in page.locator("#events tbody td:nth-child(4)").all_inner_texts():
            assert action == "audio.read"
        shots.take(page, "audit")

        page.get_by_role("link", name="Tokens").click()
        shots.take(page, "tokens")

        # Sign-out ends the session: the next page asks to sign in again.
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(f"{base}/console/sign-in")
        page.goto(f"{base}/console/recordings")
        expect(page).to_have_url(f"{base}/console/sign-in?next=/console/recordings")
        context.close()


def test_others_see_only_what_their_tokens_allow(tmp_path: Path, browser: Browser) -> None:
    shots = Shots(artifacts_dir("console-others"))
    record = {"recording": {"enabled": True}, "consent": {"required": True}}
    with serve(tmp_path, "var", CALLVAULT_AI__WORKERS="0") as server:
        base = server.base
        acme = run(_setup(server, "acme", record))
        beta = run(_setup(server, "beta", record))
        recording_id = run(_push(server, "acme", acme["pbx"]))
        recording = f"{base}/console/recordings/{recording_id}"

        # A processor: the recording's page, without an audio control; audio URLs refused.
        context = browser.new_context(base_url=base)
        page = context.new_page()
        sign_in(page, base, acme["processor"])
        page.goto(recording)
        expect(page.locator("h1")).to_contain_text(recording_id)
        expect(page.locator("audio")).to_have_count(0)
        expect(page.get_by_role("link", name="Instructions")).to_have_count(0)
        shots.take(page, "processor-recording")
        assert page.request.get(f"{recording}/audio").status == 403
        assert run(_status(server, f"/v1/recordings/{recording_id}/audio", None)) == 401
        assert (
            run(_status(server, f"/v1/recordings/{recording_id}/audio", acme["processor"])) == 403
        )
        page.goto(f"{base}/console/instructions")
        expect(page.locator("h1")).to_have_text("Not allowed")
        context.close()

        # The read-only pages read without JavaScript; the first Tab reaches the skip link.
        context = browser.new_context(base_url=base, java_script_enabled=False)
        page = context.new_page()
        sign_in(page, base, acme["admin"])
        page.goto(recording)
        expect(page.locator("#status")).to_have_text("recorded")
        expect(page.locator("#player")).to_have_count(1)
        page.keyboard.press("Tab")
        expect(page.locator(":focus")).to_have_text("Skip to content")
        shots.take(page, "admin-recording-without-javascript")
        context.close()

        # An admin of another tenant: the recording is 404, as in the API.
        context = browser.new_context(base_url=base)
        page = context.new_page()
        sign_in(page, base, beta["admin"])
        response = page.goto(recording)
        assert response is not None and response.status == 404
        expect(page.locator("h1")).to_have_text("Not found")
        assert page.request.get(f"{recording}/audio").status == 404
        shots.take(page, "other-tenant-404")

        # A form posted without its CSRF token is refused, and nothing was stored.
        refused = page.request.post(
            f"{base}/console/holds", form={"number": "+40711111111", "reason": "forged"}
        )
        assert refused.status == 403
        page.goto(f"{base}/console/holds")
        expect(page.locator("#holds")).not_to_contain_text("forged")
        context.close()

        # The operator: tenants, one tenant, its deletion's confirmation.
        context = browser.new_context(base_url=base)
        page = context.new_page()
        sign_in(page, base, server.operator)
        expect(page).to_have_url(f"{base}/console/tenants")
        expect(page.locator("#tenants")).to_contain_text("beta")
        page.get_by_label("Id (lowercase letters").fill("gamma")
        page.get_by_label("Name").fill("Gamma SRL")
        page.get_by_label("live calls").fill("5")
        page.get_by_role("button", name="Create").click()
        expect(page).to_have_url(f"{base}/console/tenants/gamma")
        expect(page.locator("dl.meta")).to_contain_text("live calls5")
        page.get_by_role("link", name="Tokens", exact=True).click()
        page.get_by_label("Role").select_option("admin")
        page.get_by_role("button", name="Mint").click()
        minted = page.locator("#secret").input_value()
        assert minted.startswith("cv_")
        shots.take(page, "operator-token-minted")
        assert run(_status(server, "/v1/tenants/gamma/instructions", minted)) == 200
        page.goto(f"{base}/console/tenants")
        shots.take(page, "operator-tenants")
        page.get_by_role("link", name="beta").click()
        page.get_by_role("link", name="Delete this tenant…").click()
        page.get_by_label("Type beta to confirm").fill("beta")
        page.get_by_role("button", name="Delete the tenant").click()
        expect(page.locator("#receipt")).to_contain_text("erased")
        shots.take(page, "operator-tenant-deleted")
        assert run(_status(server, "/v1/tenants/beta/instructions", beta["admin"])) == 401
        context.close()
