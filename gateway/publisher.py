"""Publishing what the spool holds once the object store is back, and saying how ready the
node is meanwhile.

A live call's audio reaches the store only when the call ends (``storage.spool``). When the
store is down then, the closed object waits in the spool; so do the objects a crash left.
The publisher retries them on a schedule of its own, not on the call ticker's: a try against
a dead store can take seconds of client retries, and the ticker's flushes must not wait for
it. Each try first asks the store (``check``, one cheap request) and reads the spool files
only when it answers; a failed try doubles the wait, from ``CALLVAULT_INGEST__PUBLISH_RETRY``
(2 s) up to ``MAX_RETRY_S``, so that audio is published a few seconds after the store comes
back without a dead store being hammered.

``readiness`` is what ``/readyz`` answers: a load balancer needs 503 only when the node
cannot take calls (the catalog is down, or the spool is full); a store outage that the
spool absorbs is 200 ``degraded``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from crypto.errors import CallvaultError
from gateway.calls import CallRegistry
from storage.catalog import Catalog
from storage.spool import Spool
from storage.store import ObjectStore

log = logging.getLogger(__name__)

MAX_RETRY_S = 30.0
"""The longest wait between two tries to publish spooled objects (the old fixed cadence)."""
POLL_S = 0.25
"""How often the publisher looks whether the spool holds objects to publish."""
READY_CHECK_S = 1.0
"""How long ``/readyz`` waits for the catalog's and for the store's answer: one that does
not answer (a store client's connect and read timeouts and retries can add up to a minute;
a PostgreSQL server that accepts connections and never answers, the pool's wait) is "not
reachable", so the probe still answers in time."""


class RetrySchedule:
    """When the next try to publish is due: ``first`` seconds after objects started to wait
    or after a failed try, doubling per failed try up to ``cap``. Sans-I/O: ``now`` is a
    monotonic time in seconds, passed in."""

    def __init__(self, first: float, cap: float = MAX_RETRY_S) -> None:
        if first <= 0:
            raise ValueError("the first retry wait must be positive")
        self.first = first
        self.cap = max(cap, first)
        self.wait = first
        self.due_at: float | None = None

    def due(self, now: float) -> bool:
        """Whether a try is due at ``now``; the first call starts the clock."""
        if self.due_at is None:
            self.due_at = now + self.wait
        return now >= self.due_at

    def failed(self, now: float) -> None:
        """A try failed at ``now``: the next one waits twice as long (up to ``cap``)."""
        self.wait = min(self.wait * 2, self.cap)
        self.due_at = now + self.wait

    def reset(self) -> None:
        """Nothing waits any more: the next objects that do start from ``first`` again."""
        self.wait = self.first
        self.due_at = None


async def publish_spooled(calls: CallRegistry, spool: Spool, now: datetime) -> bool:
    """One try: if the store answers, publish every waiting object (``CallRegistry.recover``
    also takes up the calls they belong to). ``True`` when nothing waits afterwards."""
    try:
        await spool.check_store()
    except CallvaultError as e:
        await spool.scan()  # files an operator removed meanwhile no longer count
        log.info(
            "the object store is still down (%s): %d spooled object(s) wait",
            e.code,
            len(spool.pending()),
        )
        return False
    recovered = await calls.recover(now)
    if recovered:
        log.info("published %d spooled object(s) to the object store", recovered)
    return not spool.has_pending


async def run_publisher(
    calls: CallRegistry,
    spool: Spool,
    now: Callable[[], datetime],
    first_retry: timedelta,
) -> None:
    """Publish waiting spool objects on a ``RetrySchedule``, until cancelled."""
    schedule = RetrySchedule(first_retry.total_seconds())
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(POLL_S)
        if not spool.has_pending:
            schedule.reset()
            continue
        if not schedule.due(loop.time()):
            continue
        try:
            done = await publish_spooled(calls, spool, now())
        except Exception:  # the publisher must outlive any one failure (the catalog was down)
            log.exception("publishing spooled objects failed")
            done = False
        if done:
            schedule.reset()
        else:
            schedule.failed(loop.time())


@dataclass(frozen=True, slots=True)
class Readiness:
    """What ``/readyz`` answers: ``status`` (``ready``, ``degraded``, or ``not_ready`` /
    ``spool_full`` for a 503) and the figures behind it."""

    status: str
    message: str = ""
    store: str = "ok"
    spool_bytes: int = 0
    spool_pending_bytes: int = 0

    @property
    def http_status(self) -> int:
        return 200 if self.status in ("ready", "degraded") else 503

    def document(self) -> dict[str, object]:
        if self.status == "ready":
            return {"status": "ready"}
        if self.status == "degraded":
            return {
                "status": "degraded",
                "store": self.store,
                "spool_bytes": self.spool_bytes,
                "spool_pending_bytes": self.spool_pending_bytes,
            }
        return {"error": self.status, "message": self.message}


async def readiness(catalog: Catalog, store: ObjectStore, spool: Spool | None) -> Readiness:
    """How ready the node is to take calls.

    * 503 ``not_ready``: the catalog does not answer, or not within ``READY_CHECK_S`` (no
      call can be decided or recorded);
    * 503 ``spool_full``: the spool is at its bound, so new calls are refused;
    * 200 ``degraded``: the store does not answer, or the spool holds objects that wait to
      be published; calls are still taken (the spool holds them);
    * 200 ``ready`` otherwise.

    While a publication has just failed, the store is not asked again here: the publisher
    asks it on its schedule, and a probe every few seconds must not pile up client retries
    against a dead store.
    """
    try:
        await asyncio.wait_for(catalog.check(), READY_CHECK_S)
    except TimeoutError:
        return Readiness(
            "not_ready", f"catalog is not reachable: no answer within {READY_CHECK_S:g} s"
        )
    except CallvaultError as e:
        return Readiness("not_ready", f"catalog is not reachable: {e.message}")
    held = spool.held_bytes if spool is not None else 0
    pending = spool.pending_bytes if spool is not None else 0
    if spool is not None and spool.full:
        return Readiness(
            "spool_full",
            f"the spool holds {held} bytes, at its bound of {spool.max_bytes} "
            "(CALLVAULT_INGEST__SPOOL_MAX_BYTES), with the audio of calls in progress and "
            "audio waiting for the object store: new calls are refused until it holds less",
            spool_bytes=held,
            spool_pending_bytes=pending,
        )
    store_state = "ok"
    if spool is not None and spool.store_down and spool.has_pending:
        store_state = "down: the last publication failed"
    else:
        try:
            await asyncio.wait_for(store.check(), READY_CHECK_S)
        except TimeoutError:
            store_state = f"not reachable: no answer within {READY_CHECK_S:g} s"
        except CallvaultError as e:
            store_state = f"not reachable: {e.message}"
    if store_state != "ok" or (spool is not None and spool.has_pending):
        return Readiness(
            "degraded", store=store_state, spool_bytes=held, spool_pending_bytes=pending
        )
    return Readiness("ready", spool_bytes=held)
