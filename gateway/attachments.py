"""AudioSocket attachments, kept in the catalog so that every node and every restart obeys them.

An AudioSocket stream proves nothing but its call's secret id, so a call is held to the
address of its first connection and carried by one connection at a time (API.md). One
process's memory cannot keep those rules: another node sharing the catalog, or this node
after a crash, would know nothing of the first connection. So the call's row keeps them
(``storage.catalog.calls``), and each step is one conditional UPDATE there:

* a connection **claims** the call: the first claim keeps its peer's address for good, a
  claim from any other address is refused (``peer_mismatch``), and a claim while another
  connection's lease runs is refused (``already_attached``);
* its node **renews** the leases of the connections it carries every ``LEASE_RENEWAL``,
  all of them in one statement (no catalog write per frame);
* the connection **releases** the call when it closes, if it still holds it. Until that
  release reached the catalog (it is in flight, or it failed and is retried at each
  renewal), a claim by the same node names the gone connection (``replaces``) and takes
  its lease over: the PBX's own reconnect is never refused because of its old connection.

A node that crashes or stalls stops renewing: its leases run out after ``LEASE_TTL`` and the
call may be claimed again, from the first peer's address only. Each connection keeps the end
of its lease as of its last successful claim or renewal, and takes no frame at or past it
(nor after a renewal showed the lease lost): a node cut off from the catalog stops, and
publishes what it recorded, when its lease ends, so two connections never write one
recording at once (as long as the nodes' clocks agree to well within ``LEASE_TTL``).

Why these durations: renewing every 5 s costs one small write per node per 5 s; a 15 s lease
survives two missed renewals (a slow catalog, a pause of the process), and runs out well
within the default reconnect grace (30 s), so a PBX that reconnects after its node crashed
gets its call back before the restored call gives up waiting. A restarted node cannot tell a
dead holder from a live one on another node, so it too waits for the lease to run out.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Iterable
from datetime import datetime, timedelta

from crypto.errors import CallvaultError
from gateway.errors import StreamRefused
from gateway.session import CallSession, EndReason
from storage.catalog import AudioSocketLease, Catalog

log = logging.getLogger(__name__)

LEASE_RENEWAL = timedelta(seconds=5)
"""How often a node renews the leases of the AudioSocket connections it carries."""
LEASE_TTL = timedelta(seconds=15)
"""How long a lease runs unless renewed: three renewals."""

_REFUSALS = {
    "already_attached": "is carried by another connection",
    "peer_mismatch": "streamed from another address; a reconnect must come from it",
    "call_ended": "has ended",
}


class Attachments:
    """The AudioSocket leases of one node."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._node = f"{socket.gethostname()[:64]}:{os.getpid()}"
        self._renewed_at: datetime | None = None
        self._releasing: dict[tuple[str, str], tuple[str, datetime]] = {}
        """The holders of this node's connections that are gone but whose release has not
        reached the catalog yet (in flight, or failed: retried every ``LEASE_RENEWAL``), by
        (tenant, call id), with when they went."""

    def new_holder(self) -> str:
        """A name for one connection, unique across nodes and restarts; the catalog shows
        which node carries a call (not a secret: it opens nothing)."""
        return f"{self._node}:{secrets.token_hex(8)}"

    async def claim(
        self, tenant: str, call_id: str, *, peer: str, holder: str, now: datetime
    ) -> datetime:
        """Attach connection ``holder`` from ``peer`` to the call in the catalog and return
        when its lease ends, or raise the ``StreamRefused`` that says why not. The lease of
        a connection of this node that is gone and not yet released (the PBX reconnects
        while the release is in flight, or after it failed) is taken over: the PBX is not
        kept waiting on its own old connection."""
        key = (tenant, call_id)
        gone = self._releasing.get(key)
        until = now + LEASE_TTL
        outcome = await self._catalog.calls.claim_audiosocket(
            tenant,
            call_id,
            peer=peer,
            holder=holder,
            now=now,
            until=until,
            replaces=gone[0] if gone else None,
        )
        if outcome != "attached":
            raise StreamRefused(f"Call {call_id!r} {_REFUSALS[outcome]}.", code=outcome)
        if gone is not None and self._releasing.get(key) == gone:
            del self._releasing[key]  # taken over: nothing left to release
        return until

    async def release(self, tenant: str, call_id: str, holder: str, now: datetime) -> None:
        """Detach ``holder`` in the catalog if it still holds the call. Never raises: a
        release that fails is retried at each renewal (until it succeeds, the lease is
        taken over by this node's next claim of the call, or runs out)."""
        self._releasing[(tenant, call_id)] = (holder, now)
        await self._release(tenant, call_id, holder, now)

    async def _release(self, tenant: str, call_id: str, holder: str, now: datetime) -> None:
        try:
            await self._catalog.calls.release_audiosocket(tenant, call_id, holder, now)
        except CallvaultError as e:
            log.warning(
                "call %s: its AudioSocket lease could not be released (retried): %s",
                call_id,
                e.code,
                extra={"tenant": tenant, "call_id": call_id, "code": e.code},
            )
            return
        if self._releasing.get((tenant, call_id)) == (holder, now):
            del self._releasing[(tenant, call_id)]

    async def renew(self, sessions: Iterable[CallSession], now: datetime) -> None:
        """Every ``LEASE_RENEWAL`` (else nothing): retry the releases that failed, and renew
        the lease of every connection attached here. Then, every time, a connection whose
        lease was lost (this node stalled past it and another connection took the call) or
        ran out (its renewals failed: this node may be cut off from the catalog while
        another carries the call) is detached: its audio is no longer taken (its
        ``StreamBinding`` refuses it) and what it recorded is published."""
        sessions = list(sessions)
        lost: list[tuple[CallSession, str]] = []
        if self._renewed_at is None or now - self._renewed_at >= LEASE_RENEWAL:
            self._renewed_at = now
            for (tenant, call_id), (holder, went) in list(self._releasing.items()):
                await self._release(tenant, call_id, holder, went)
            lost = await self._renew(sessions, now)
        for session in sessions:
            if session.holder is not None and session.lease_lapsed(now):
                lost.append((session, session.holder))
        for session, holder in lost:
            if session.holder != holder:
                continue  # it detached meanwhile
            log.warning(
                "call %s: its AudioSocket lease was lost or ran out; its connection is refused",
                session.call_id,
                extra={"tenant": session.tenant, "call_id": session.call_id},
            )
            session.detach(now, holder=holder)
            await session.publish(now)

    async def _renew(
        self, sessions: list[CallSession], now: datetime
    ) -> list[tuple[CallSession, str]]:
        """Renew the leases of the connections attached here; those that were lost."""
        held = [(session, session.holder) for session in sessions if session.holder]
        if not held:
            return []
        until = now + LEASE_TTL
        try:
            renewed = await self._catalog.calls.renew_audiosocket(
                [(session.tenant, session.call_id, holder) for session, holder in held],
                until=until,
            )
        except CallvaultError as e:
            log.warning("AudioSocket leases could not be renewed: %s", e.code)
            return []  # they run out where they are
        lost = []
        for session, holder in held:
            if session.holder != holder:
                continue  # it detached meanwhile
            if (session.tenant, session.call_id) in renewed:
                session.lease_until = until
            else:
                lost.append((session, holder))
        return lost

    async def expiry(self, session: CallSession, now: datetime) -> EndReason | None:
        """``session.expiry``, but an AudioSocket call that a connection on another node
        carried more recently than this process saw (or carries now) waits for its grace
        from then: a node never ends a call that another node records. Nor at its maximum
        duration on the wall clock: the node that carries it ends it then."""
        reason = session.expiry(now)
        if session.call.transport != "audiosocket" or session.attached:
            return reason
        if reason in ("reconnect_timeout", "start_timeout"):
            await self.elsewhere(session, now)
            reason = session.expiry(now)
        elif reason == "max_duration" and session.closing is None:
            lease = await self.elsewhere(session, now)
            if not lease.ended and lease.held_by_other(None, now):
                return None
        return reason

    async def elsewhere(self, session: CallSession, now: datetime) -> AudioSocketLease:
        """The lease of a call that no connection of this process carries. If a connection
        elsewhere carries it now, what was recorded here is published at once (not when the
        call ends there), and the reconnect grace counts from the last time it was seen
        carried anywhere."""
        lease = await self._catalog.calls.audiosocket_lease(session.tenant, session.call_id)
        if lease.ended or lease.attached_until is None:
            return lease
        if lease.held_by_other(None, now):
            await session.publish(now)
        session.seen_attached(lease.attached_until)
        return lease
