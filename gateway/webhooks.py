"""Webhooks: signed notifications to the tenant's URL when something happens to a recording.

Why a queue: an event (an analysis completed, a recording deleted) is recorded as a ``webhook``
job in the catalog's job table by `queue_event` (or, built by `event_jobs`, in the
transaction of the write that raises it), and `WebhookSender` delivers it later. The code
that raises an event (the AI worker, the retention sweeper) never waits on a tenant's
server, a slow or dead receiver never blocks ingest, and a delivery survives a restart.

Events: ``analysis.completed``, ``analysis.failed``, ``recording.deleted`` and
``token.break_glass`` (the operator minted itself access to the tenant's data: the token's
id, role, expiry, the operator's reason and its actor, never the secret) and
``audit.checkpoint`` (``gateway.checkpoints``). The body is a
JSON object with ids and metadata only, never audio, transcripts or analysis text::

    {"id": "evt_…", "event": "analysis.completed", "created_at": "2026-11-27T10:00:00Z",
     "tenant": "acme", "data": {"recording_id": "…", "call_id": "…", "status": "analyzed"}}

Headers: ``Content-Type: application/json``, ``Callvault-Event`` (the event),
``Callvault-Delivery`` (the event id, the same on every retry: receivers deduplicate on it),
``User-Agent: callvault-webhooks/1`` and ``Callvault-Signature``.

Signature scheme (the one Stripe popularised, so receivers know it)::

    Callvault-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

``t`` is the time of this delivery attempt; the HMAC covers it and the raw body bytes, so
neither can be changed and an old delivery cannot be replayed once it is older than the
receiver's tolerance (`verify` allows 5 minutes either way). A receiver recomputes the HMAC
over the raw body it received (before parsing JSON) with the webhook secret of the tenant's
instructions, compares in constant time, and checks ``t``. More than one ``v1=`` may appear
in a future version (during a secret rotation); `verify` accepts the header if any matches.

Delivery: the URL and secret are read from the tenant's *current* instructions at each
attempt, so a rotated secret applies to events already queued and a removed URL drops them.
The secret is stored sealed under the tenant's keys (``storage.webhooksecret``) and opened
here, for the attempt only. A 2xx answer completes the event; anything else (another
status, a timeout, a connection or DNS error) is retried after ``retry_backoff`` doubled per
attempt (capped at an hour) until ``max_attempts``. Redirects are not followed.

Where a webhook may go (https only, public addresses only) is ``gateway.egress``'s rule.

`sign` and `verify` do no I/O; they are for receivers and tests as much as for the sender.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import orjson
from prometheus_client import CollectorRegistry, Counter

from crypto.errors import DecryptionFailed, KeyUnavailable
from crypto.keys import KeyProvider
from gateway.egress import AddressRefused, CheckingResolver, check_host, not_a_name, url_refusal
from gateway.settings import WebhookSettings
from storage.catalog import Catalog, Job, NewJob, iso
from storage.errors import CatalogUnavailable, Conflict
from storage.instructions import SealedSecret
from storage.retention import DeletedEvents, Notify, deleted_event_id
from storage.webhooksecret import open_secret

__all__ = [
    "EVENTS",
    "JOB_KIND",
    "MAX_RETRY_DELAY",
    "SIGNATURE_HEADER",
    "USER_AGENT",
    "WebhookSender",
    "deletion_notifier",
    "event_jobs",
    "queue_event",
    "queue_events",
    "retry_delay",
    "sign",
    "verify",
]

log = logging.getLogger(__name__)

EVENTS: Final = (
    "analysis.completed",
    "analysis.failed",
    "recording.deleted",
    "token.break_glass",
    "audit.checkpoint",
)
"""Every event callvault sends."""
JOB_KIND: Final = "webhook"
"""The catalog job kind of a queued event."""
SIGNATURE_HEADER: Final = "Callvault-Signature"
USER_AGENT: Final = "callvault-webhooks/1"
MAX_RETRY_DELAY: Final = timedelta(hours=1)
"""The longest wait between two attempts, however many came before."""
DEFAULT_TOLERANCE_S: Final = 300
"""How far `verify` lets the signed timestamp be from ``now``, either way."""

# A claimed job is leased for the delivery timeout plus this; the lease only matters if the
# sender dies mid-delivery (another sender then takes the job over once it runs out).
_LEASE_MARGIN = timedelta(seconds=60)
_IDLE_S = 1.0
_MAX_TIMESTAMP_DIGITS = 12
_OUTCOMES = ("delivered", "retry", "failed", "refused", "dropped")


# --- signing (sans-I/O) ---------------------------------------------------------------------


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Callvault-Signature`` header value for ``body`` sent at ``timestamp`` (unix s)."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, *, now: int, tolerance_s: int = DEFAULT_TOLERANCE_S
) -> bool:
    """Whether ``header`` is a valid signature of ``body`` under ``secret``, made within
    ``tolerance_s`` of ``now`` (unix seconds). A malformed header is simply not valid."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            # ASCII digits only (int() would also take "+5", " 5", "5_000" and other
            # scripts' digits), and few enough that int() cannot refuse the length.
            if timestamp is not None or not (value.isascii() and value.isdigit()):
                return False
            if len(value) > _MAX_TIMESTAMP_DIGITS:
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
        # Other schemes (v0, a future v2) are ignored, as receivers of such headers do.
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance_s:
        return False
    expected = _digest(secret, timestamp, body)
    # Every candidate is compared (no early exit) so timing says nothing about which matched.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    return matched


def retry_delay(backoff: timedelta, attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt: ``backoff * 2**(attempts-1)``,
    at most `MAX_RETRY_DELAY`."""
    # The exponent is capped before multiplying: 2**49 times 10 s overflows timedelta.
    exponent = min(max(attempts - 1, 0), 32)
    return min(backoff * (2**exponent), MAX_RETRY_DELAY)


# --- queueing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """An event to queue: its name, its data (ids and metadata only: the body leaves
    callvault, so it never carries content), the recording it is about, and, for callers
    that may repeat themselves after a crash, its id."""

    event: str
    data: dict[str, Any]
    recording_id: str | None = None
    event_id: str | None = None


async def queue_event(
    catalog: Catalog,
    *,
    tenant: str,
    event: str,
    data: dict[str, Any],
    now: datetime,
    max_attempts: int,
    recording_id: str | None = None,
    event_id: str | None = None,
) -> Job | None:
    """Queue one event for the tenant's webhook (see ``queue_events``); None when nothing
    was queued (no webhook URL, or queued already under ``event_id``)."""
    queued = await queue_events(
        catalog,
        tenant=tenant,
        events=[Event(event, data, recording_id, event_id)],
        now=now,
        max_attempts=max_attempts,
    )
    return queued[0] if queued else None


async def queue_events(
    catalog: Catalog,
    *,
    tenant: str,
    events: Sequence[Event],
    now: datetime,
    max_attempts: int,
) -> list[Job]:
    """Queue events for the tenant's webhook in one transaction, reading its current
    instructions once; nothing is stored when they have no webhook URL.

    An ``event_id`` makes queueing idempotent: a caller that may repeat itself after a
    crash (the AI worker) derives the id from its own work, and an
    event already queued under it is not queued again. Returns the jobs queued now. A
    ``recording_id`` links the job to its recording in the catalog (and must name an
    existing recording)."""
    _check_events(events)
    if not events:
        return []
    if (await catalog.instructions.current(tenant)).document.webhook.url is None:
        return []
    jobs = event_jobs(tenant, events, now=now, max_attempts=max_attempts)
    return await catalog.jobs.enqueue_many(tenant, jobs, now=now)


def _check_events(events: Sequence[Event]) -> None:
    for item in events:
        if item.event not in EVENTS:
            raise ValueError(f"unknown webhook event {item.event!r}; one of {', '.join(EVENTS)}")


def event_jobs(
    tenant: str, events: Sequence[Event], *, now: datetime, max_attempts: int
) -> list[NewJob]:
    """The ``webhook`` jobs of events raised at ``now`` (no I/O): for a caller that has
    checked the tenant's webhook URL and queues them itself (``queue_events``, or the
    retention sweeper inside the transaction that marks the recordings deleted)."""
    _check_events(events)
    created_at = iso(now)
    jobs = []
    for item in events:
        event_id = item.event_id or f"evt_{secrets.token_hex(16)}"
        # The job is the event: its id is the event id, so Callvault-Delivery and the job
        # match.
        jobs.append(
            NewJob(
                id=event_id,
                kind=JOB_KIND,
                recording_id=item.recording_id,
                max_attempts=max_attempts,
                payload={
                    "id": event_id,
                    "event": item.event,
                    "created_at": created_at,
                    "tenant": tenant,
                    "data": item.data,
                },
            )
        )
    return jobs


def deletion_notifier(catalog: Catalog, *, max_attempts: int) -> Notify:
    """The retention sweeper's ``Notify``: reads the tenant's webhook URL once, and builds
    the ``recording.deleted`` events of the recordings a completion moves, under ids
    derived from the recordings (the sweeper queues them in that transaction)."""

    async def notify(*, tenant: str, now: datetime) -> DeletedEvents | None:
        if (await catalog.instructions.current(tenant)).document.webhook.url is None:
            return None

        def build(deleted: Sequence[tuple[str, str]]) -> list[NewJob]:
            events = [
                Event(
                    "recording.deleted",
                    {"recording_id": recording_id, "reason": reason},
                    recording_id=recording_id,
                    event_id=deleted_event_id(recording_id),
                )
                for recording_id, reason in deleted
            ]
            return event_jobs(tenant, events, now=now, max_attempts=max_attempts)

        return build

    return notify


# --- delivery -------------------------------------------------------------------------------


class WebhookSender:
    """Takes due ``webhook`` jobs from the catalog and POSTs them, one at a time.

    ``owner`` names this sender in job leases (unique per process, e.g. ``host:pid``).
    ``now`` is the clock (a fake one in tests): it dates claims, retries and signatures.
    Run `run` as a task and cancel it to stop, then await `close`.
    """

    def __init__(
        self,
        catalog: Catalog,
        keys: KeyProvider,
        settings: WebhookSettings,
        now: Callable[[], datetime],
        owner: str,
        registry: CollectorRegistry | None,
        *,
        idle_s: float = _IDLE_S,
    ) -> None:
        self._catalog = catalog
        self._keys = keys
        self._settings = settings
        self._now = now
        self._owner = owner
        self._idle_s = idle_s
        self._session: aiohttp.ClientSession | None = None
        self.deliveries = Counter(
            "callvault_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered (2xx), retry (failed, will be "
            "retried), failed (given up), refused (a private address or a plain http URL), "
            "dropped (no URL now).",
            ["outcome"],
            registry=registry or CollectorRegistry(),
        )
        for outcome in _OUTCOMES:
            self.deliveries.labels(outcome)  # present at 0 from the start

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use: a session belongs to the running event loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=None if self._settings.allow_private else CheckingResolver()
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout.total_seconds()),
                # Never a proxy from the environment, never cookies from one receiver to
                # the next (a tenant's server must not influence another's requests).
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self) -> None:
        """Deliver due events forever; sleeps ``idle_s`` when none is due. An unexpected
        error (the catalog unreachable) is logged and the loop goes on: the job's lease runs
        out and it is taken again."""
        while True:
            try:
                delivered = await self.deliver_once()
            except CatalogUnavailable as e:  # expected while it is down: no traceback a second
                log.warning("webhook sender: %s", e.code)
                delivered = False
            except Exception:
                log.exception("webhook sender: unexpected error")
                delivered = False
            if not delivered:
                await asyncio.sleep(self._idle_s)

    async def deliver_once(self) -> bool:
        """Claim one due event and attempt it; False when none was due."""
        lease = self._settings.timeout + _LEASE_MARGIN
        job = await self._catalog.jobs.claim(self._owner, self._now(), lease, kinds=[JOB_KIND])
        if job is None:
            return False
        try:
            await self._attempt(job)
        except Conflict:
            # The lease ran out mid-delivery and another sender took the job: it will be
            # delivered (again) from there; Callvault-Delivery lets the receiver dedupe.
            log.warning("webhook %s: lease lost during delivery", job.id)
        return True

    async def _attempt(self, job: Job) -> None:
        payload = job.payload
        if not isinstance(payload, dict) or not isinstance(payload.get("event"), str):
            await self._finish(job, "failed", error="malformed event payload")
            return
        rule = (await self._catalog.instructions.current(job.tenant_id)).document.webhook
        if rule.url is None or rule.secret is None:
            log.info(
                "webhook %s (%s): dropped, the tenant has no webhook URL now",
                job.id,
                payload["event"],
            )
            await self._finish(job, "dropped")
            return
        host = urlsplit(rule.url).hostname or ""
        refusal = url_refusal(rule.url, self._settings)
        if refusal is not None:
            # Stored before the settings changed, or by an older version: refused for good.
            log.warning("webhook %s: refused: the URL %s", job.id, refusal)
            await self._finish(job, "refused", error=f"refused: the URL {refusal}")
            return
        try:
            secret = await self._open(job.tenant_id, rule.secret)
        except (KeyUnavailable, DecryptionFailed) as exc:
            # Replaced since the instructions were read (the next attempt reads the new one),
            # or the tenant's keys are gone: never signed with anything else.
            await self._retry(job, f"the webhook secret cannot be opened ({exc.code})")
            return
        body = orjson.dumps(payload)
        try:
            async with asyncio.timeout(self._settings.timeout.total_seconds()):
                if not self._settings.allow_private:
                    await check_host(rule.url)
                status = await self._post(rule.url, secret, payload["event"], job.id, body)
        except AddressRefused as exc:
            await self._refuse(job, exc)
            return
        except UnicodeError:  # a resolver's IDNA encoding of the host failed: never resolves
            await self._refuse(job, not_a_name(host))
            return
        except TimeoutError:
            await self._retry(job, f"timeout after {self._settings.timeout.total_seconds():g} s")
            return
        except (aiohttp.ClientError, OSError) as exc:
            await self._retry(job, _describe(exc, host))
            return
        if 200 <= status < 300:
            await self._finish(job, "delivered")
        else:
            await self._retry(job, f"HTTP {status}")

    async def _open(self, tenant: str, secret: str | SealedSecret) -> str:
        if isinstance(secret, SealedSecret):
            return await open_secret(self._catalog, self._keys, tenant, secret)
        # Still in clear: a catalog written before sealing, until a start seals it.
        return secret

    async def _post(self, url: str, secret: str, event: str, event_id: str, body: bytes) -> int:
        headers = {
            "Content-Type": "application/json",
            "Callvault-Event": event,
            "Callvault-Delivery": event_id,
            SIGNATURE_HEADER: sign(secret, int(self._now().timestamp()), body),
            "User-Agent": USER_AGENT,
        }
        async with self._client().post(
            url, data=body, headers=headers, allow_redirects=False
        ) as response:
            return response.status

    async def _retry(self, job: Job, error: str) -> None:
        now = self._now()
        failed = await self._catalog.jobs.fail(
            job.id,
            self._owner,
            error,
            now,
            retry_at=now + retry_delay(self._settings.retry_backoff, job.attempts),
        )
        outcome = "retry" if failed.status == "queued" else "failed"
        log.info(
            "webhook %s: attempt %d/%d failed (%s): %s",
            job.id,
            job.attempts,
            job.max_attempts,
            error,
            "will retry" if outcome == "retry" else "given up",
        )
        self.deliveries.labels(outcome).inc()

    async def _refuse(self, job: Job, refusal: AddressRefused) -> None:
        log.warning("webhook %s: %s", job.id, refusal)
        await self._finish(job, "refused", error=str(refusal))

    async def _finish(self, job: Job, outcome: str, *, error: str | None = None) -> None:
        """Complete (delivered, dropped) or fail for good (refused, failed) without retry."""
        if error is None:
            await self._catalog.jobs.complete(job.id, self._owner, self._now())
        else:
            await self._catalog.jobs.fail(job.id, self._owner, error, self._now())
        self.deliveries.labels(outcome).inc()


def _describe(error: BaseException, host: str) -> str:
    """A short last_error for a failed connection: the kind and the host, never the URL's
    path or query (which may carry a token), never the body."""
    if isinstance(error, aiohttp.ClientConnectorDNSError | socket.gaierror):
        return f"dns: cannot resolve {host}"
    if isinstance(error, aiohttp.ClientConnectorError):
        return (
            f"connection error: {host}: {error.os_error.strerror or type(error.os_error).__name__}"
        )
    return f"{type(error).__name__} talking to {host}"
