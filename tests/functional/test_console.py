"""The console's sessions, CSRF tokens and pages, in process (``aiohttp_client``).

The browser tier (``tests/browser``) drives the pages in chromium; this tier checks each
rule of ``gateway.console.sessions`` on its own, on a clock the test turns: what the cookie
is and what the catalog keeps of it, that a POST without the form's CSRF token changes
nothing, that a revoked token, a deleted tenant, sign-out, idleness and the lifetime each
end a session, that the console refuses what the API refuses the same token, and the
headers every console answer carries.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from http.cookies import SimpleCookie
from typing import Any

import pytest
import sqlalchemy as sa
from yarl import URL

from gateway.app import build_app
from gateway.settings import ConsoleSettings, Settings
from gateway.state import SERVICES
from storage.catalog.schema import console_sessions
from tests.console import Browser
from tests.gateway import (
    RECORD,
    ULAW,
    FakeClock,
    Gateway,
    GatewayServer,
    bearer,
    start_gateway,
    stream_twilio,
    tone,
)

LIFETIME = timedelta(hours=8)
IDLE = timedelta(minutes=30)


async def session_rows(gw: Gateway) -> list[sa.Row]:
    catalog = gw.app[SERVICES].catalog
    async with catalog.core.transaction() as conn:
        return list((await conn.execute(sa.select(console_sessions))).all())


async def signed_in(gw: Gateway, token: str) -> Browser:
    browser = Browser(gw.client)
    await browser.sign_in(token)
    return browser


def morsel(browser: Browser, name: str) -> SimpleCookie:
    return next(c for c in reversed(browser.set_cookies) if name in c)


async def test_the_cookie_is_random_http_only_secure_strict_and_stored_hashed(
    clocked_gateway: Gateway,
) -> None:
    gw = clocked_gateway
    acme = await gw.tenant("acme")
    browser = await signed_in(gw, acme.admin)
    cookie = morsel(browser, "callvault_console")["callvault_console"]
    assert cookie["httponly"] and cookie["secure"]
    assert (cookie["samesite"], cookie["path"]) == ("Strict", "/console/")
    assert int(cookie["max-age"]) == int(LIFETIME.total_seconds())
    assert len(cookie.value) >= 43  # 256 bits, base64
    (row,) = await session_rows(gw)
    assert row.id_hash == hashlib.sha256(cookie.value.encode()).hexdigest()
    assert cookie.value not in str(tuple(row)) and acme.admin not in str(tuple(row))
    # A second sign-in is a second session with another cookie.
    other = await signed_in(gw, acme.admin)
    assert other.cookies["callvault_console"] != cookie.value
    assert len(await session_rows(gw)) == 2


async def test_sign_in_refuses_bad_tokens_pbx_tokens_and_a_missing_csrf_token(
    gateway: Gateway,
) -> None:
    acme = await gateway.tenant("acme")
    browser = Browser(gateway.client)
    await browser.get("/console/sign-in")
    response, text = await browser.post("/console/sign-in", {"token": "cv_" + "x" * 43})
    assert response.status == 401 and "unknown, revoked or expired" in text
    response, text = await browser.post("/console/sign-in", {"token": acme.pbx})
    assert response.status == 403 and "pbx token" in text
    response, _ = await browser.post("/console/sign-in", {"token": "x" * 10_000})
    assert response.status == 401
    response, _ = await browser.post("/console/sign-in", {"token": acme.admin}, csrf=False)
    assert response.status == 403
    assert "callvault_console" not in browser.cookies
    assert await session_rows(gateway) == []
    # The sign-in form's token is bound to this browser's pre-session cookie.
    stranger = Browser(gateway.client)
    await stranger.get("/console/sign-in")
    browser.csrf = stranger.csrf
    response, _ = await browser.post("/console/sign-in", {"token": acme.admin})
    assert response.status == 403


async def test_pages_need_a_session_and_sign_in_returns_to_the_page_asked_for(
    gateway: Gateway,
) -> None:
    acme = await gateway.tenant("acme")
    browser = Browser(gateway.client)
    response, _ = await browser.get("/console/audit?since=3")
    assert response.status == 303
    location = URL(response.headers["Location"])
    assert (location.path, location.query["next"]) == ("/console/sign-in", "/console/audit?since=3")
    await browser.get("/console/sign-in?next=%2Fconsole%2Faudit%3Fsince%3D3")
    response, _ = await browser.post(
        "/console/sign-in", {"token": acme.admin, "next": "/console/audit?since=3"}
    )
    assert response.headers["Location"] == "/console/audit?since=3"


@pytest.mark.parametrize(
    "target",
    ["//evil.example/console/", "https://evil.example/", "/v1/tenants", "/console\\x",
     "/console/../v1/tenants", "/console/x\r\nSet-Cookie: a=b", "/console/ x",
     "/console/%2e%2e/v1/tenants", "/console/.%2E/x", "/console/..\\v1/tenants"],
)  # fmt: skip
async def test_sign_in_never_redirects_off_the_console(gateway: Gateway, target: str) -> None:
    acme = await gateway.tenant("acme")
    browser = Browser(gateway.client)
    await browser.get("/console/sign-in")
    response, _ = await browser.post("/console/sign-in", {"token": acme.admin, "next": target})
    assert response.headers["Location"] == "/console/recordings"


async def test_a_post_without_the_sessions_csrf_token_changes_nothing(gateway: Gateway) -> None:
    acme = await gateway.tenant("acme", RECORD)
    browser = await signed_in(gateway, acme.admin)
    await browser.get("/console/instructions")
    form = {"recording.enabled": "on", "retention.recordings": "P1D"}
    response, _ = await browser.post("/console/instructions", form, csrf=False)
    assert response.status == 403
    other = await signed_in(gateway, acme.admin)  # a valid token, of another session
    await other.get("/console/instructions")
    browser.csrf = other.csrf
    response, _ = await browser.post("/console/instructions", form)
    assert response.status == 403
    browser.csrf = other.csrf  # the 403 page gave the browser its own token back
    response, _ = await browser.post("/console/holds", {"number": "+40711111111", "reason": "x"})
    assert response.status == 403
    instructions = await gateway.client.get(
        f"/v1/tenants/{acme.id}/instructions", headers=bearer(acme.admin)
    )
    assert (await instructions.json())["version"] == 1  # RECORD's, nothing after it
    holds = await gateway.client.get(
        f"/v1/tenants/{acme.id}/legal-holds", headers=bearer(acme.admin)
    )
    assert (await holds.json())["items"] == []


async def test_revoking_the_token_or_deleting_the_tenant_ends_its_sessions(
    gateway: Gateway,
) -> None:
    acme = await gateway.tenant("acme")
    beta = await gateway.tenant("beta")
    admin = await signed_in(gateway, acme.admin)
    processor = await signed_in(gateway, acme.processor)
    beta_admin = await signed_in(gateway, beta.admin)
    tokens = await gateway.client.get("/v1/tenants/acme/tokens", headers=bearer(acme.admin))
    processor_id = next(t["id"] for t in (await tokens.json())["items"] if t["role"] == "processor")
    revoked = await gateway.client.delete(
        f"/v1/tenants/acme/tokens/{processor_id}", headers=bearer(acme.admin)
    )
    assert revoked.status == 200
    response, _ = await processor.get("/console/recordings")
    assert response.status == 303 and response.headers["Location"].startswith("/console/sign-in")
    response, _ = await admin.get("/console/recordings")
    assert response.status == 200
    deleted = await gateway.client.delete("/v1/tenants/beta", headers=bearer(gateway.operator))
    assert deleted.status == 200
    response, _ = await beta_admin.get("/console/recordings")
    assert response.status == 303


async def test_sessions_end_when_idle_and_at_their_lifetime(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    gw = clocked_gateway
    acme = await gw.tenant("acme")
    browser = await signed_in(gw, acme.admin)
    step = IDLE - timedelta(minutes=5)  # used every 25 min: never idle, yet 8 h end it
    used = 0
    while (await browser.get("/console/recordings"))[0].status == 200 and used < 100:
        used += 1
        clock.advance(step.total_seconds())
    assert used * step >= LIFETIME > (used - 1) * step  # alive at 7 h 55, gone at 8 h 20
    idle = await signed_in(gw, acme.admin)
    clock.advance(IDLE.total_seconds() - 1)
    assert (await idle.get("/console/recordings"))[0].status == 200
    clock.advance(IDLE.total_seconds())
    assert (await idle.get("/console/recordings"))[0].status == 303


async def test_sign_out_ends_the_session_on_every_node(gateway: Gateway) -> None:
    acme = await gateway.tenant("acme")
    browser = await signed_in(gateway, acme.admin)
    kept = dict(browser.cookies)  # what a copied cookie (or another tab) still holds
    await browser.get("/console/recordings")
    response, _ = await browser.post("/console/sign-out", {})
    assert response.status == 303 and "callvault_console" not in browser.cookies
    assert await session_rows(gateway) == []
    replay = Browser(gateway.client, cookies=kept)
    response, _ = await replay.get("/console/recordings")
    assert response.status == 303


async def test_the_console_refuses_what_the_api_refuses_the_same_token(
    gateway: Gateway,
) -> None:
    acme = await gateway.tenant("acme", RECORD)
    beta = await gateway.tenant("beta", RECORD)
    announced = await gateway.announce(acme)
    await stream_twilio(gateway, acme, announced["call_id"], ULAW.encode(tone(1.0, 440)))
    recording = f"/console/recordings/{announced['recording_id']}"
    processor = await signed_in(gateway, acme.processor)
    response, text = await processor.get(recording)
    assert response.status == 200 and "<audio" not in text
    assert (await processor.get(f"{recording}/audio"))[0].status == 403
    assert (await processor.get("/console/instructions"))[0].status == 403
    assert (await processor.get("/console/tenants"))[0].status == 403
    admin = await signed_in(gateway, acme.admin)
    response, text = await admin.get(recording)
    assert response.status == 200 and 'id="player"' in text
    audio, _ = await admin.get(f"{recording}/audio")
    assert (audio.status, audio.content_type) == (200, "audio/wav")
    other = await signed_in(gateway, beta.admin)
    for path in (
        recording,
        f"{recording}/audio",
        f"{recording}/erase",
        "/console/tenants/acme/tokens",
    ):
        response, text = await other.get(path)
        assert response.status == 404, path
        assert "Not found" in text and "+40711111111" not in text
    # A path value can only be an id: a %2F (decoded to "/" by aiohttp) or "?" would put
    # another API route in the page's path (".." the client resolves; SEGMENT refuses it
    # too: tests/unit). Nothing is read, nothing is audited.
    rec = announced["recording_id"]
    catalog = gateway.app[SERVICES].catalog

    async def audio_reads() -> int:
        events = await catalog.audit.list("acme", limit=1000)
        return sum(e.action == "audio.read" for e in events)

    before = await audio_reads()
    for path in (
        f"/console/recordings/{rec}%2Faudio",  # would stream the WAV, as the recording page
        f"/console/recordings/{rec}%3Fa",
        "/console/tenants/acme%2Flegal-holds/delete",
    ):
        assert (await admin.get(path))[0].status == 404, path
    assert await audio_reads() == before  # the %2F did not reach the audio route


async def test_every_console_answer_carries_the_consoles_headers(gateway: Gateway) -> None:
    acme = await gateway.tenant("acme", RECORD)
    announced = await gateway.announce(acme)
    await stream_twilio(gateway, acme, announced["call_id"], ULAW.encode(tone(1.0, 440)))
    browser = Browser(gateway.client)
    answers = [(await browser.get("/console/sign-in"))[0]]
    await browser.sign_in(acme.admin)
    for path in (
        "/console/recordings",
        "/console/recordings/rec_nope",  # the console's own 404 page
        "/console/static/console.css",
        "/console/no-such-page",  # aiohttp's 404, answered by the error middleware
        f"/console/recordings/{announced['recording_id']}/audio",  # the API's streamed WAV
    ):
        answers.append((await browser.get(path))[0])
    wrong_method, _ = await browser.post("/console/audit", {})
    answers.append(wrong_method)
    assert [a.status for a in answers] == [200, 200, 404, 200, 404, 200, 405]
    for response in answers:
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Cache-Control"] == "no-store"
    # No HEAD: a page's WAV would follow the headers, and the read be audited.
    head = await gateway.client.head(
        f"/console/recordings/{announced['recording_id']}/audio", headers=browser._headers()
    )
    assert head.status == 405


async def test_the_audio_export_answers_byte_ranges(gateway: Gateway) -> None:
    acme = await gateway.tenant("acme", RECORD)
    announced = await gateway.announce(acme)
    await stream_twilio(gateway, acme, announced["call_id"], ULAW.encode(tone(1.0, 440)))
    path = f"/v1/recordings/{announced['recording_id']}/audio"
    whole = await gateway.client.get(path, headers=bearer(acme.admin))
    body = await whole.read()
    assert whole.headers["Accept-Ranges"] == "bytes"
    for header, first, last in (
        ("bytes=0-43", 0, 43),
        ("bytes=100-", 100, len(body) - 1),
        ("bytes=-10", len(body) - 10, len(body) - 1),
        ("bytes=1000-999999999", 1000, len(body) - 1),
    ):
        part = await gateway.client.get(path, headers={**bearer(acme.admin), "Range": header})
        assert part.status == 206, header
        assert part.headers["Content-Range"] == f"bytes {first}-{last}/{len(body)}"
        assert await part.read() == body[first : last + 1]
    refused = await gateway.client.get(
        path, headers={**bearer(acme.admin), "Range": f"bytes={len(body)}-"}
    )
    assert (refused.status, (await refused.json())["error"]) == (416, "range_not_satisfiable")
    assert refused.headers["Content-Range"] == f"bytes */{len(body)}"
    # Through the console (its player), the same refusal names the size too.
    browser = await signed_in(gateway, acme.admin)
    console = f"/console/recordings/{announced['recording_id']}/audio"
    response = await gateway.client.get(
        console, headers={**browser._headers(), "Range": f"bytes={len(body)}-"}
    )
    assert (response.status, response.headers["Content-Range"]) == (416, f"bytes */{len(body)}")
    # The WAV answers no HEAD: its read would be audited with nothing sent.
    assert (await gateway.client.head(path, headers=bearer(acme.admin))).status == 405
    ignored = await gateway.client.get(
        path, headers={**bearer(acme.admin), "Range": "bytes=0-1,5-9"}
    )
    assert (ignored.status, await ignored.read()) == (200, body)


CONTROL = re.compile(r"<(input|select|textarea)\b([^>]*)>", re.S)
LABEL_FOR = re.compile(r'<label for="([^"]+)"')


async def test_every_control_of_every_page_has_a_label(gateway: Gateway) -> None:
    acme = await gateway.tenant("acme", RECORD)
    announced = await gateway.announce(acme)
    await stream_twilio(gateway, acme, announced["call_id"], ULAW.encode(tone(1.0, 440)))
    pages = {
        "admin": [
            "/console/recordings", f"/console/recordings/{announced['recording_id']}",
            f"/console/recordings/{announced['recording_id']}/erase", "/console/instructions",
            "/console/holds", "/console/erasure?number=%2B40711111111", "/console/audit",
            "/console/tenants/acme/tokens",
        ],
        "operator": [
            "/console/tenants", "/console/tenants/acme", "/console/tenants/acme/delete",
            "/console/operator/tokens", "/console/tenants/acme/tokens",
        ],
    }  # fmt: skip
    signin = Browser(gateway.client)
    checked = [(await signin.get("/console/sign-in"))[1]]
    for role, paths in pages.items():
        browser = await signed_in(gateway, acme.admin if role == "admin" else gateway.operator)
        for path in paths:
            response, text = await browser.get(path)
            assert response.status == 200, path
            checked.append(text)
    controls = 0
    for text in checked:
        labelled = set(LABEL_FOR.findall(text))
        for _, attributes in CONTROL.findall(text):
            if 'type="hidden"' in attributes:
                continue
            controls += 1
            control_id = re.search(r'id="([^"]+)"', attributes)
            assert control_id is not None and control_id.group(1) in labelled, attributes
    assert controls >= 35  # the pages were read, and their forms with them


async def test_an_instructions_form_older_than_the_current_version_is_not_saved(
    gateway: Gateway,
) -> None:
    acme = await gateway.tenant("acme", RECORD)
    first, second = await signed_in(gateway, acme.admin), await signed_in(gateway, acme.admin)
    await first.get("/console/instructions")
    await second.get("/console/instructions")
    form = {"base_version": "1", "recording.enabled": "on", "consent.required": "on",
            "retention.recordings": "P30D", "retention.transcripts": "P1Y",
            "retention.call_records": "P3Y", "exclude_numbers": "+40712345678"}  # fmt: skip
    response, _ = await second.post("/console/instructions", form)
    assert response.status == 303
    assert response.headers["Location"] == "/console/instructions?saved=2#saved"
    response, text = await first.post("/console/instructions", {**form, "exclude_numbers": ""})
    assert response.status == 409 and "version 2 was stored since you opened" in text
    current = await gateway.client.get("/v1/tenants/acme/instructions", headers=bearer(acme.admin))
    assert (await current.json())["exclude_numbers"] == ["+40712345678"]  # second's kept


async def test_a_refused_form_does_not_send_a_typed_webhook_secret_back(gateway: Gateway) -> None:
    acme = await gateway.tenant("acme", RECORD)
    browser = await signed_in(gateway, acme.admin)
    await browser.get("/console/instructions")
    secret = "s3cr3t-webhook-key-" + "x" * 12
    form = {"base_version": "1", "retention.recordings": "ninety days",
            "webhook.url": "https://hooks.example.com/cv", "webhook.secret": secret}  # fmt: skip
    response, text = await browser.post("/console/instructions", form)
    assert response.status == 422 and "retention.recordings" in text
    assert secret not in text and "ninety days" in text


async def test_redaction_settings_survive_the_form_and_a_refusal(gateway: Gateway) -> None:
    stored = {**RECORD, "ai": {"transcript": True, "redaction": {
        "transcript": True, "audio": True, "entities": ["card_number", "iban"], "fill": "tone",
        "padding_ms": 400, "keep_original": True}}}  # fmt: skip
    acme = await gateway.tenant("acme", stored)
    browser = await signed_in(gateway, acme.admin)
    _, page = await browser.get("/console/instructions")
    assert 'value="card_number, iban"' in page and 'value="400"' in page
    form = {"base_version": "1", "recording.enabled": "on", "ai.transcript": "on",
            "ai.redaction.transcript": "on", "ai.redaction.audio": "on",
            "ai.redaction.entities": "card_number, iban", "ai.redaction.fill": "tone",
            "ai.redaction.padding_ms": "5000", "retention.recordings": "P90D",
            "retention.transcripts": "P365D", "retention.call_records": "P3Y"}  # fmt: skip
    # keep_original unticked, padding out of range: refused, and the box stays unticked.
    response, text = await browser.post("/console/instructions", form)
    assert response.status == 422 and "ai.redaction.padding_ms" in text
    (box,) = re.findall(r'<input[^>]*id="ai\.redaction\.keep_original"[^>]*>', text)
    assert "checked" not in box
    (audio,) = re.findall(r'<input[^>]*id="ai\.redaction\.audio"[^>]*>', text)
    assert "checked" in audio
    response, _ = await browser.post(
        "/console/instructions", {**form, "ai.redaction.padding_ms": "300"}
    )
    assert response.status == 303
    current = await gateway.client.get("/v1/tenants/acme/instructions", headers=bearer(acme.admin))
    assert (await current.json())["ai"]["redaction"] == {
        "transcript": True, "audio": True, "entities": ["card_number", "iban"], "fill": "tone",
        "padding_ms": 300, "keep_original": False,
    }  # fmt: skip


async def test_a_session_in_use_never_idles_out_however_short_the_idle_time(
    aiohttp_client: Any, gateway_settings: Settings, clock: FakeClock
) -> None:
    settings = gateway_settings.model_copy(
        update={"console": ConsoleSettings(session_idle=timedelta(seconds=60))}
    )
    client = await aiohttp_client(GatewayServer(build_app(settings, clock=clock)))
    gw = await start_gateway(client)
    acme = await gw.tenant("acme")
    browser = await signed_in(gw, acme.admin)
    for _ in range(10):  # used every 40 s: each use must start the 60 s again
        clock.advance(40)
        assert (await browser.get("/console/recordings"))[0].status == 200
    clock.advance(60)
    assert (await browser.get("/console/recordings"))[0].status == 303


async def test_an_admin_mints_and_revokes_a_token_and_releases_a_hold(gateway: Gateway) -> None:
    acme = await gateway.tenant("acme", RECORD)
    browser = await signed_in(gateway, acme.admin)
    await browser.get("/console/tenants/acme/tokens")
    response, text = await browser.post("/console/tenants/acme/tokens", {"role": "processor"})
    assert response.status == 201 and "shown only this once" in text
    token_id = re.search(r"Token <code>(tok_[0-9a-f]+)</code> \(processor\) minted", text)
    assert token_id is not None
    revoke = f"/console/tenants/acme/tokens/{token_id.group(1)}/revoke"
    assert f'action="{revoke}"' in text  # the row's button
    response, _ = await browser.post(revoke, {})
    assert response.status == 303
    tokens = await gateway.client.get("/v1/tenants/acme/tokens", headers=bearer(acme.admin))
    (row,) = [t for t in (await tokens.json())["items"] if t["id"] == token_id.group(1)]
    assert row["revoked_at"] is not None
    await browser.get("/console/holds")
    form = {"number": "+40711111111", "call_ids": "", "reason": "audit 2026"}
    response, _ = await browser.post("/console/holds", form)
    assert response.status == 303
    _, text = await browser.get("/console/holds")
    hold_id = re.search(r'action="/console/holds/(hold_[0-9a-f]+)/release"', text)
    assert hold_id is not None
    response, _ = await browser.post(f"/console/holds/{hold_id.group(1)}/release", {})
    assert response.status == 303
    _, text = await browser.get("/console/holds")
    assert "released" in text and 'action="/console/holds/' not in text
