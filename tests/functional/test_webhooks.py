"""Webhook delivery against a real receiver (an aiohttp server on 127.0.0.1), a real
catalog (SQLite in a temporary directory) and a real keyring (the secret is sealed under the
tenant's keys): signatures, retries with backoff on a fake clock, giving up, timeouts,
dropped and rotated configurations, the private-address and plain-http refusals, and a
secret that can no longer be opened.

Time never passes by sleeping: the sender's clock is a `FakeClock` the tests turn, and a job
due later is simply not claimed until the clock is moved past its ``run_after``. The one real
wait is the timeout test's, a fraction of a second of aiohttp's own timeout.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CollectorRegistry

from crypto.keys import LocalKeyring
from gateway.checkpoints import Checkpointer, CheckpointReport
from gateway.settings import WebhookSettings
from gateway.webhooks import WebhookSender, queue_event, verify
from storage.catalog import Catalog, Job
from storage.catalog.urls import async_database_url
from storage.instructions import parse_instructions
from storage.webhooksecret import seal_secret, store_instructions
from tests.gateway import FakeClock
from tests.keyring import audit_keyring

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
SECRET = "whsec_functional-0123456789"
DATA = {"recording_id": "rec_1", "call_id": "call-1", "status": "analyzed"}


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook endpoint: answers ``script`` in order (a status, or ``"hang"`` to never
    answer), then 200; records every request."""

    url: str
    script: list[int | str] = field(default_factory=list)
    received: list[Delivery] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Delivery(dict(request.headers), await request.read()))
        answer = self.script.pop(0) if self.script else 200
        if answer == "hang":
            await self.release.wait()
            answer = 200
        if answer == 302:
            raise web.HTTPFound("/elsewhere")
        return web.Response(status=int(answer), text="ok")

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.received.append(Delivery(dict(request.headers), await request.read()))
        return web.Response(status=200)


@pytest.fixture
async def receiver(aiohttp_server: Callable[..., Any]) -> AsyncIterator[Receiver]:
    app = web.Application()
    receiver = Receiver(url="")
    app.router.add_post("/hook", receiver.handle)
    app.router.add_post("/elsewhere", receiver.elsewhere)
    server = await aiohttp_server(app)
    receiver.url = str(server.make_url("/hook"))
    yield receiver
    receiver.release.set()  # a hanging handler ends before the server shuts down


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[Catalog]:
    catalog = await Catalog.open(
        async_database_url(None, tmp_path), audit_keys=audit_keyring(tmp_path / "keys")
    )
    try:
        await catalog.migrate()
        await catalog.tenants.create("acme", name="Acme SRL", region="eu", now=T0)
        yield catalog
    finally:
        await catalog.close()


@pytest.fixture
def keys(tmp_path: Path) -> LocalKeyring:
    return LocalKeyring.open(tmp_path / "keys", bytes(range(32)))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def settings() -> WebhookSettings:
    return WebhookSettings(
        timeout=timedelta(seconds=5),
        max_attempts=3,
        retry_backoff=timedelta(seconds=10),
        allow_private=True,
        allow_http=True,  # the receiver is plain http on loopback
    )


@pytest.fixture
async def sender(
    catalog: Catalog,
    keys: LocalKeyring,
    settings: WebhookSettings,
    clock: FakeClock,
    registry: CollectorRegistry,
) -> AsyncIterator[WebhookSender]:
    sender = WebhookSender(catalog, keys, settings, clock.now, "test-sender", registry)
    try:
        yield sender
    finally:
        await sender.close()


async def instruct(
    catalog: Catalog, keys: LocalKeyring, url: str | None, secret: str | None = SECRET
) -> None:
    """Store the webhook as a PUT does (the secret sealed), without the PUT's URL checks."""
    webhook = {"url": url, "secret": secret if url is not None else None}
    document = parse_instructions({"webhook": webhook})
    await store_instructions(catalog, keys, "acme", document, created_by="tok_1", now=T0)


async def queue(
    catalog: Catalog, clock: FakeClock, settings: WebhookSettings, event: str = "analysis.completed"
) -> Job:
    job = await queue_event(
        catalog,
        tenant="acme",
        event=event,
        data=DATA,
        now=clock.now(),
        max_attempts=settings.max_attempts,
    )
    assert job is not None
    return job


async def job_of(catalog: Catalog, job_id: str) -> Job:
    (job,) = [j for j in await catalog.jobs.list("acme", kind="webhook") if j.id == job_id]
    return job


def count(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value("callvault_webhook_deliveries_total", {"outcome": outcome})
    assert value is not None
    return value


# --- queueing -------------------------------------------------------------------------------


async def test_queue_event_without_a_webhook_is_none_and_stores_nothing(
    catalog: Catalog, keys: LocalKeyring, clock: FakeClock
) -> None:
    # No instructions at all, then instructions without a webhook (a secret alone is no URL).
    for document in (None, {"recording": {"enabled": True}}, {"webhook": {"secret": SECRET}}):
        if document is not None:
            parsed = parse_instructions(document)
            await store_instructions(catalog, keys, "acme", parsed, created_by="tok_1", now=T0)
        job = await queue_event(
            catalog, tenant="acme", event="analysis.completed", data=DATA, now=T0, max_attempts=3
        )
        assert job is None
    assert await catalog.jobs.list("acme") == []


async def test_queue_event_stores_the_event_as_a_webhook_job(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    settings: WebhookSettings,
    receiver: Receiver,
) -> None:
    await instruct(catalog, keys, receiver.url)
    job = await queue(catalog, clock, settings, "recording.deleted")
    assert job.kind == "webhook"
    assert job.status == "queued"
    assert job.max_attempts == 3
    assert job.run_after == T0
    assert job.payload == {
        "id": job.id,
        "event": "recording.deleted",
        "created_at": "2026-11-27T10:00:00Z",
        "tenant": "acme",
        "data": DATA,
    }
    assert job.id.startswith("evt_") and len(job.id) == 36
    # The secret and the URL stay in the instructions; the job holds the event only.
    assert SECRET not in json.dumps(job.payload)
    assert receiver.url not in json.dumps(job.payload)
    other = await queue(catalog, clock, settings)
    assert other.id != job.id
    with pytest.raises(ValueError, match="unknown webhook event"):
        await queue_event(
            catalog, tenant="acme", event="call.started", data={}, now=T0, max_attempts=1
        )


# --- delivery -------------------------------------------------------------------------------


async def test_an_event_is_delivered_once_with_a_valid_signature(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    settings: WebhookSettings,
    sender: WebhookSender,
    receiver: Receiver,
    registry: CollectorRegistry,
) -> None:
    await instruct(catalog, keys, receiver.url)
    job = await queue(catalog, clock, settings)
    clock.advance(2)
    assert await sender.deliver_once() is True
    assert await sender.deliver_once() is False  # nothing else is due

    (delivery,) = receiver.received
    assert json.loads(delivery.body) == job.payload
    headers = delivery.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["Callvault-Event"] == "analysis.completed"
    assert headers["Callvault-Delivery"] == job.id
    assert headers["User-Agent"] == "callvault-webhooks/1"
    signature = headers["Callvault-Signature"]
    sent_at = int(clock.now().timestamp())
    assert signature.startswith(f"t={sent_at},v1=")  # the time of delivery, not of queueing
    assert verify(SECRET, signature, delivery.body, now=sent_at)
    assert not verify("whsec_someone-else-0123", signature, delivery.body, now=sent_at)
    assert not verify(SECRET, signature, delivery.body + b"\n", now=sent_at)

    done = await job_of(catalog, job.id)
    assert (done.status, done.attempts, done.last_error) == ("done", 1, None)
    assert count(registry, "delivered") == 1
    assert count(registry, "retry") == 0


async def test_an_audit_checkpoint_is_delivered_with_what_checks_it(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    settings: WebhookSettings,
    sender: WebhookSender,
    receiver: Receiver,
) -> None:
    await instruct(catalog, keys, receiver.url)
    await catalog.audit.append("acme", "tok_1", "instructions.updated", None, {}, T0)
    checkpointer = Checkpointer(catalog, max_attempts=settings.max_attempts)
    report = await checkpointer.make_due(clock.now())
    (checkpoint,) = report.made
    assert await checkpointer.make_due(clock.now()) == CheckpointReport()  # queued once
    assert await sender.deliver_once() is True
    assert await sender.deliver_once() is False

    (delivery,) = receiver.received
    assert delivery.headers["Callvault-Event"] == "audit.checkpoint"
    sent_at = int(clock.now().timestamp())
    assert verify(SECRET, delivery.headers["Callvault-Signature"], delivery.body, now=sent_at)
    body = json.loads(delivery.body)
    assert (body["event"], body["tenant"]) == ("audit.checkpoint", "acme")
    data = body["data"]
    assert data == {
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "at": "2026-11-27T10:00:00.000000Z",
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
    }
    # What the receiver keeps is enough to check the checkpoint later, with the public key.
    signer = await catalog.core.audit_keys.checkpoint_signer()
    message = (
        b"callvault-audit-checkpoint/v1\n"
        + json.dumps(
            {**{k: data[k] for k in ("at", "hash", "key_id", "seq")}, "tenant": "acme"},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
    )
    public = Ed25519PublicKey.from_public_bytes(signer.public_key)
    public.verify(base64.b64decode(data["signature"]), message)


async def test_a_500_is_retried_after_the_backoff_then_delivered(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    settings: WebhookSettings,
    sender: WebhookSender,
    receiver: Receiver,
    registry: CollectorRegistry,
) -> None:
    await instruct(catalog, keys, receiver.url)
    receiver.script = [500]
    job = await queue(catalog, clock, settings)
    assert await sender.deliver_once() is True
    waiting = await job_of(catalog, job.id)
    assert (waiting.status, waiting.attempts, waiting.last_error) == ("queued", 1, "HTTP 500")
    assert waiting.run_after == T0 + timedelta(seconds=10)

    clock.advance(9.999)
    assert await sender.deliver_once() is False  # not due yet
    assert len(receiver.received) == 1
    clock.advance(0.001)
    assert await sender.deliver_once() is True
    assert len(receiver.received) == 2
    assert {d.headers["Callvault-Delivery"] for d in receiver.received} == {job.id}
    assert receiver.received[0].body == receiver.received[1].body
    # Each attempt is signed at its own time.
    assert verify(
        SECRET,
        receiver.received[1].headers["Callvault-Signature"],
        receiver.received[1].body,
        now=int(clock.now().timestamp()),
        tolerance_s=0,
    )

    done = await job_of(catalog, job.id)
    assert (done.status, done.attempts) == ("done", 2)
    assert (count(registry, "retry"), count(registry, "delivered")) == (1, 1)


@pytest.mark.parametrize("status", [410, 404, 302])
async def test_a_refusing_receiver_fails_the_event_after_max_attempts(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    settings: WebhookSettings,
    sender: WebhookSender,
    receiver: Receiver,
    registry: CollectorRegistry,
    status: int,
) -> None:
    await instruct(catalog, keys, receiver.url)
    receiver.script = [status] * 10
    job = await queue(catalog, clock, settings)
    run_afters = []
    for _ in range(3):
        assert await sender.deliver_once() is True
        current = await job_of(catalog, job.id)
        run_afters.append(current.run_after - clock.now())
        clock.current = current.run_after if current.status == "queued" else clock.current
    failed = await job_of(catalog, job.id)
    assert (failed.status, failed.attempts, failed.last_error) == ("failed", 3, f"HTTP {status}")
    # Backoff 10 s, then 20 s; the last attempt is not rescheduled.
    assert run_afters[:2] == [timedelta(seconds=10), timedelta(seconds=20)]
    clock.advance(86_400)
    assert await sender.deliver_once() is False
    # Redirects are not followed: every request went to the webhook URL itself.
    assert len(receiver.received) == 3
    assert {d.headers["Callvault-Delivery"] for d in receiver.received} == {job.id}
    assert (count(registry, "retry"), count(registry, "failed")) == (2, 1)
    assert count(registry, "delivered") == 0


async def test_a_timeout_is_retried(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    receiver: Receiver,
    registry: CollectorRegistry,
) -> None:
    settings = WebhookSettings(
        timeout=timedelta(seconds=0.2),
        retry_backoff=timedelta(seconds=10),
        allow_private=True,
        allow_http=True,
    )
    sender = WebhookSender(catalog, keys, settings, clock.now, "test-sender", registry)
    try:
        await instruct(catalog, keys, receiver.url)
        receiver.script = ["hang"]
        job = await queue(catalog, clock, settings)
        assert await sender.deliver_once() is True
        waiting = await job_of(catalog, job.id)
        assert (waiting.status, waiting.last_error) == ("queued", "timeout after 0.2 s")
        assert waiting.attempts == 1
        assert waiting.max_attempts == 8  # the settings' default
        clock.advance(10)
        assert await sender.deliver_once() is True
        assert (await job_of(catalog, job.id)).status == "done"
        assert (count(registry, "retry"), count(registry, "delivered")) == (1, 1)
    finally:
        await sender.close()


async def test_a_connection_error_is_retried(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    settings: WebhookSettings,
    sender: WebhookSender,
) -> None:
    with socket.socket() as s:  # a port nobody listens on once the socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await instruct(catalog, keys, f"http://127.0.0.1:{port}/hook?token=t0ps3cret")
    job = await queue(catalog, clock, settings)
    assert await sender.deliver_once() is True
    waiting = await job_of(catalog, job.id)
    assert waiting.status == "queued"
    assert waiting.last_error is not None
    assert waiting.last_error.startswith("connection error: 127.0.0.1")
    assert "t0ps3cret" not in waiting.last_error  # never the URL's query


async def test_an_event_whose_url_was_removed_is_dropped(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    settings: WebhookSettings,
    sender: WebhookSender,
    receiver: Receiver,
    registry: CollectorRegistry,
) -> None:
    await instruct(catalog, keys, receiver.url)
    job = await queue(catalog, clock, settings)
    await instruct(catalog, keys, None)
    assert await sender.deliver_once() is True
    assert receiver.received == []
    dropped = await job_of(catalog, job.id)
    assert (dropped.status, dropped.attempts) == ("done", 1)
    assert count(registry, "dropped") == 1
    assert count(registry, "delivered") == 0


async def test_a_rotated_secret_and_url_apply_to_queued_events(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    settings: WebhookSettings,
    sender: WebhookSender,
    receiver: Receiver,
    aiohttp_server: Callable[..., Any],
) -> None:
    await instruct(catalog, keys, receiver.url)
    job = await queue(catalog, clock, settings)
    rotated = "whsec_rotated-secret-0001"
    await instruct(catalog, keys, receiver.url, rotated)
    assert await sender.deliver_once() is True
    (delivery,) = receiver.received
    now = int(clock.now().timestamp())
    assert verify(rotated, delivery.headers["Callvault-Signature"], delivery.body, now=now)
    assert not verify(SECRET, delivery.headers["Callvault-Signature"], delivery.body, now=now)
    assert (await job_of(catalog, job.id)).status == "done"


async def test_loopback_is_refused_without_a_request_when_private_is_not_allowed(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    receiver: Receiver,
    registry: CollectorRegistry,
) -> None:
    settings = WebhookSettings(allow_private=False, allow_http=True, max_attempts=5)
    sender = WebhookSender(catalog, keys, settings, clock.now, "test-sender", registry)
    port = receiver.url.split(":")[2].split("/")[0]
    try:
        for url in (receiver.url, f"http://localhost:{port}/hook"):
            await instruct(catalog, keys, url)
            job = await queue(catalog, clock, settings)
            assert await sender.deliver_once() is True
            refused = await job_of(catalog, job.id)
            # Refused for good: a permanent error, no retry however many attempts remain.
            assert (refused.status, refused.attempts) == ("failed", 1)
            assert refused.last_error is not None
            assert "loopback" in refused.last_error
            assert SECRET not in refused.last_error
        assert receiver.received == []
        assert count(registry, "refused") == 2
        assert count(registry, "retry") == 0
    finally:
        await sender.close()


async def test_the_connection_itself_refuses_loopback_after_a_passing_first_lookup(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    receiver: Receiver,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # DNS rebinding: the first lookup answered a public address, the connection's own
    # lookup answers loopback. Simulated by skipping the first check.
    settings = WebhookSettings(allow_private=False, allow_http=True)
    sender = WebhookSender(catalog, keys, settings, clock.now, "test-sender", registry)

    async def passes(url: str) -> None:
        return None

    monkeypatch.setattr("gateway.webhooks.check_host", passes)
    port = receiver.url.split(":")[2].split("/")[0]
    try:
        await instruct(catalog, keys, f"http://localhost:{port}/hook")
        job = await queue(catalog, clock, settings)
        assert await sender.deliver_once() is True
        refused = await job_of(catalog, job.id)
        assert (refused.status, refused.attempts) == ("failed", 1)
        assert refused.last_error == "refused: localhost resolves to a loopback address"
        assert receiver.received == []
        assert count(registry, "refused") == 1
    finally:
        await sender.close()


async def test_plain_http_is_refused_at_delivery_unless_allowed(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    receiver: Receiver,
    registry: CollectorRegistry,
) -> None:
    # Stored while the gateway allowed http (or by an older version): the sender refuses it
    # for good, before any request, and counts it with the private addresses.
    settings = WebhookSettings(allow_private=True, allow_http=False, max_attempts=5)
    sender = WebhookSender(catalog, keys, settings, clock.now, "test-sender", registry)
    try:
        await instruct(catalog, keys, receiver.url)
        job = await queue(catalog, clock, settings)
        assert await sender.deliver_once() is True
        refused = await job_of(catalog, job.id)
        assert (refused.status, refused.attempts) == ("failed", 1)
        assert refused.last_error == (
            "refused: the URL must be an https:// URL (this gateway sends webhooks over TLS only)"
        )
        assert receiver.received == []
        assert (count(registry, "refused"), count(registry, "retry")) == (1, 0)
    finally:
        await sender.close()


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("[2002:7f00:1::1]", "6to4"),
        ("[64:ff9b::7f00:1]", "NAT64"),
        ("[64:ff9b:1::7f00:1]", "NAT64 local-use"),
        ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", "Teredo"),
        ("[::7f00:1]", "IPv4-compatible"),
        ("[fe80::1%25lo]", "zone-scoped"),
        ("2130706433", "loopback"),  # 127.0.0.1 written as one number
    ],
)
async def test_an_address_in_a_stored_url_is_refused_at_delivery(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    registry: CollectorRegistry,
    host: str,
    reason: str,
) -> None:
    # A PUT refuses these URLs (tests/functional/test_api_instructions.py); one stored while
    # allow_private was on is refused for good when it is delivered without it.
    settings = WebhookSettings(allow_private=False, allow_http=True)
    sender = WebhookSender(catalog, keys, settings, clock.now, "test-sender", registry)
    try:
        await instruct(catalog, keys, f"https://{host}:9/hook")
        job = await queue(catalog, clock, settings)
        assert await sender.deliver_once() is True
        refused = await job_of(catalog, job.id)
        assert (refused.status, refused.attempts) == ("failed", 1)
        assert refused.last_error == (
            f"refused: the URL names a {reason} address, which webhooks may not reach"
        )
        assert count(registry, "refused") == 1
    finally:
        await sender.close()


@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize("host", ["a..b", f"{'a' * 64}.example"])
async def test_a_stored_host_that_is_no_dns_name_is_refused_for_good(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    registry: CollectorRegistry,
    host: str,
    allow_private: bool,
) -> None:
    # A PUT refuses such a host; one an older version stored is refused at its first
    # attempt (a lookup would raise UnicodeError, not a retryable DNS error), counted.
    settings = WebhookSettings(allow_private=allow_private, max_attempts=5)
    sender = WebhookSender(catalog, keys, settings, clock.now, "test-sender", registry)
    sealed, key = await seal_secret(keys, "acme", SECRET, now=T0)
    webhook = {"url": f"https://{host}/hook", "secret": sealed.model_dump()}
    await catalog.instructions.add("acme", {"webhook": webhook}, "tok_old", T0, secret_key=key)
    try:
        job = await queue(catalog, clock, settings)
        assert await sender.deliver_once() is True
        refused = await job_of(catalog, job.id)
        assert (refused.status, refused.attempts) == ("failed", 1)
        assert refused.last_error is not None and "not a valid DNS name" in refused.last_error
        assert (count(registry, "refused"), count(registry, "retry")) == (1, 0)
    finally:
        await sender.close()


async def test_a_lookup_that_cannot_encode_the_host_is_a_refusal_not_a_traceback(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Should a host pass the URL check and still fail the resolver's IDNA encoding, the
    # attempt is refused for good too. Simulated by skipping the URL check; with
    # allow_private, aiohttp's own resolver meets the host.
    settings = WebhookSettings(allow_private=True, max_attempts=5)
    sender = WebhookSender(catalog, keys, settings, clock.now, "test-sender", registry)

    def passes(url: str, settings: WebhookSettings) -> None:
        return None

    monkeypatch.setattr("gateway.webhooks.url_refusal", passes)
    sealed, key = await seal_secret(keys, "acme", SECRET, now=T0)
    webhook = {"url": "https://a..b/hook", "secret": sealed.model_dump()}
    await catalog.instructions.add("acme", {"webhook": webhook}, "tok_old", T0, secret_key=key)
    try:
        job = await queue(catalog, clock, settings)
        assert await sender.deliver_once() is True
        refused = await job_of(catalog, job.id)
        assert (refused.status, refused.last_error) == (
            "failed",
            "refused: a..b is not a valid DNS name",
        )
        assert (count(registry, "refused"), count(registry, "retry")) == (1, 0)
    finally:
        await sender.close()


async def test_a_secret_that_cannot_be_opened_is_never_replaced_by_another(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    settings: WebhookSettings,
    sender: WebhookSender,
    receiver: Receiver,
) -> None:
    # The tenant's keys destroyed (as deleting it does) while an event waits: the secret
    # cannot be opened, and nothing is sent unsigned or signed with anything else.
    await instruct(catalog, keys, receiver.url)
    job = await queue(catalog, clock, settings)
    await keys.destroy_tenant("acme")
    assert await sender.deliver_once() is True
    waiting = await job_of(catalog, job.id)
    assert (waiting.status, waiting.attempts) == ("queued", 1)
    assert waiting.last_error == "the webhook secret cannot be opened (key_unavailable)"
    assert receiver.received == []


# --- the loop -------------------------------------------------------------------------------


async def test_run_delivers_and_survives_unexpected_errors(
    catalog: Catalog,
    keys: LocalKeyring,
    clock: FakeClock,
    settings: WebhookSettings,
    receiver: Receiver,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sender = WebhookSender(catalog, keys, settings, clock.now, "test-sender", registry, idle_s=0.01)
    real = sender.deliver_once
    calls = 0
    delivered = asyncio.Event()

    async def flaky() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the catalog hiccuped")
        result = await real()
        if result:
            delivered.set()
        return result

    monkeypatch.setattr(sender, "deliver_once", flaky)
    await instruct(catalog, keys, receiver.url)
    job = await queue(catalog, clock, settings)
    task = asyncio.create_task(sender.run())
    try:
        await asyncio.wait_for(delivered.wait(), timeout=10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await sender.close()
    assert calls >= 2
    assert "unexpected error" in caplog.text
    assert (await job_of(catalog, job.id)).status == "done"
    assert len(receiver.received) == 1
