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
* the connection **releases** the call when it closes, if it still holds it.

A node that crashes or stalls stops renewing: its leases run out after ``LEASE_TTL`` and the
call may be claimed again, from the first peer's address only. The node learns it lost a
lease at its next renewal and stops taking that connection's audio, so two connections never
write one recording at once.

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

    def new_holder(self) -> str:
        """A name for one connection, unique across nodes and restarts; the catalog shows
        which node carries a call (not a secret: it opens nothing)."""
        return f"{self._node}:{secrets.token_hex(8)}"

    async def claim(
        self, tenant: str, call_id: str, *, peer: str, holder: str, now: datetime
    ) -> None:
        """Attach connection ``holder`` from ``peer`` to the call in the catalog, or raise
        the ``StreamRefused`` that says why not."""
        outcome = await self._catalog.calls.claim_audiosocket(
            tenant, call_id, peer=peer, holder=holder, now=now, until=now + LEASE_TTL
        )
        if outcome != "attached":
            raise StreamRefused(f"Call {call_id!r} {_REFUSALS[outcome]}.", code=outcome)

    async def release(self, tenant: str, call_id: str, holder: str, now: datetime) -> None:
        """Detach ``holder`` in the catalog if it still holds the call. Never raises: a
        release that fails leaves a lease that runs out."""
        try:
            await self._catalog.calls.release_audiosocket(tenant, call_id, holder, now)
        except CallvaultError as e:
            log.warning(
                "call %s: its AudioSocket lease could not be released: %s",
                call_id,
                e.code,
                extra={"tenant": tenant, "call_id": call_id, "code": e.code},
            )

    async def renew(self, sessions: Iterable[CallSession], now: datetime) -> None:
        """Every ``LEASE_RENEWAL`` (else nothing): renew the lease of every connection
        attached here. A connection whose lease was lost (this node stalled past it and
        another connection took the call) is detached: its audio is no longer taken (its
        ``StreamBinding`` refuses it) and what it recorded is published."""
        if self._renewed_at is not None and now - self._renewed_at < LEASE_RENEWAL:
            return
        held = [(session, session.holder) for session in sessions if session.holder]
        self._renewed_at = now
        if not held:
            return
        renewed = await self._catalog.calls.renew_audiosocket(
            [(session.tenant, session.call_id, holder) for session, holder in held],
            until=now + LEASE_TTL,
        )
        for session, holder in held:
            if (session.tenant, session.call_id) in renewed or session.holder != holder:
                continue  # renewed, or it detached meanwhile
            log.warning(
                "call %s: its AudioSocket lease was lost; its connection is refused",
                session.call_id,
                extra={"tenant": session.tenant, "call_id": session.call_id},
            )
            session.detach(now, holder=holder)
            await session.publish(now)

    async def expiry(self, session: CallSession, now: datetime) -> EndReason | None:
        """``session.expiry``, but an AudioSocket call that a connection on another node
        carried more recently than this process saw (or carries now) waits for its grace
        from then: a node never ends a call that another node records."""
        reason = session.expiry(now)
        if reason in ("reconnect_timeout", "start_timeout") and (
            session.call.transport == "audiosocket"
        ):
            await self.elsewhere(session, now)
            reason = session.expiry(now)
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
