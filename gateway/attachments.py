"""Stream attachments, kept in the catalog so that every node and every restart obeys them.

A streamed call (Twilio Media Streams, mod_audio_fork, AudioSocket) is carried by one
stream at a time: a second stream of a call that is streaming is refused (WebSocket close
1008 ``call_in_progress``, AudioSocket 0xff ``already_attached``), and a reconnect after a
drop carries the same call on. Behind a load balancer the two streams may reach two nodes,
and one process's memory cannot keep that rule (nor can a node restarted after a crash), so
the call's row keeps it (``storage.catalog.calls``), and each step is one conditional
UPDATE there:

* a stream **claims** the call; a claim while another stream's lease runs is refused. An
  AudioSocket stream proves nothing but the call's secret id, so its call is also held to
  the address of its first connection for good: a claim from any other address is refused
  (``peer_mismatch``; AudioSocket only: a WebSocket stream proves its pbx token);
* its node **renews** the leases of the streams it carries every ``LEASE_RENEWAL``, all of
  them in one statement (no catalog write per frame);
* the stream **releases** the call when it closes, if it still holds it, after its audio
  was published (its objects committed: each stint on a node has objects of its own, so
  a call that moves away and back is stored in order). A publish that fails (the spool,
  the store or the catalog) keeps the lease, renewed with the others: the call cannot
  move to another node, nor end there and run its AI job without this node's part, until
  a renewal's retry published it; then the lease is released. Until that release reached
  the catalog (it is in flight, or it failed and is retried at each renewal), a claim by
  the same node names the gone stream (``replaces``) and takes its lease over: the PBX's
  own reconnect is never refused because of its old connection.

A node that crashes or stalls stops renewing: its leases run out after ``LEASE_TTL`` and the
call may be claimed again (AudioSocket: from the first peer's address only). Each stream
keeps the end of its lease as of its last successful claim or renewal, and takes no frame
at or past it (nor after a renewal showed the lease lost): a node cut off from the catalog
stops, and publishes what it recorded, when its lease ends, so two streams never write one
recording at once (as long as the nodes' clocks agree to well within ``LEASE_TTL``). A node
that another node's stream took a call from publishes what it recorded of it at its next
renewal. A node restarted after a crash releases the leases its earlier process held
(holders are named ``<node>:<process>:<stream>``), so its PBXs reconnect at once; another
node cannot tell a dead holder from a live one, so it waits for the lease to run out.

Why these durations: renewing every 5 s costs one small write per node per 5 s; a 15 s lease
survives two missed renewals (a slow catalog, a pause of the process), and runs out well
within the default reconnect grace (30 s), so a PBX that reconnects to another node after
its node crashed gets its call back before the call gives up waiting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Iterable
from datetime import datetime, timedelta

from crypto.errors import CallvaultError
from gateway.errors import StreamRefused
from gateway.session import CallSession, EndReason
from storage.catalog import Catalog, StreamLease

log = logging.getLogger(__name__)

LEASE_RENEWAL = timedelta(seconds=5)
"""How often a node renews the leases of the streams it carries."""
LEASE_TTL = timedelta(seconds=15)
"""How long a lease runs unless renewed: three renewals."""

_REFUSALS = {
    "already_attached": "is carried by another connection",
    "peer_mismatch": "streamed from another address; a reconnect must come from it",
    "call_ended": "has ended",
}


def streamed(session: CallSession) -> bool:
    """A call carried by streams that claim it (Twilio, fork, AudioSocket); an RTP call's
    media is bound to the ports of the node that announced it instead."""
    return session.call.transport != "rtp"


class Attachments:
    """The stream leases of one node."""

    def __init__(self, catalog: Catalog, *, node: str | None = None) -> None:
        """``node``: this node's id, which its restarts keep and no other node running at
        the same time has (``gateway.nodes.node_id_of``); default: the host
        name (a test's registry without an app)."""
        self._catalog = catalog
        self._node = node or socket.gethostname()[:64]
        self._prefix = f"{self._node}:{os.getpid()}.{secrets.token_hex(4)}:"
        """Names this run of the node (a restart makes a new one): its streams' holders
        begin with it, and at start the node releases the leases of its earlier runs."""
        self._renewed_at: datetime | None = None
        self._releasing: dict[tuple[str, str], tuple[str, datetime]] = {}
        """The holders of this node's streams that are gone but whose release has not
        reached the catalog yet (in flight, or failed: retried every ``LEASE_RENEWAL``), by
        (tenant, call id), with when they went."""
        self._flushing: set[str] = set()
        """Those of them whose audio is being flushed: not released before it is durable."""
        self._unflushed: dict[tuple[str, str], tuple[CallSession, str, datetime]] = {}
        """Those of them whose publish failed, with their session: their leases are renewed,
        and the publish retried, every ``LEASE_RENEWAL``; released once it succeeded."""
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def prefix(self) -> str:
        """What the holders of this process's streams begin with."""
        return self._prefix

    def new_holder(self) -> str:
        """A name for one stream, unique across nodes and restarts: ``<node>:<process>:``
        and a random part. The catalog shows which node carries a call (not a secret: it
        opens nothing)."""
        return f"{self._prefix}{secrets.token_hex(8)}"

    async def release_earlier(self, now: datetime) -> int:
        """At start: release the leases that earlier processes of this node held (it was
        killed or crashed while they streamed), so that the PBXs' reconnects are taken at
        once; how many. Two processes must never run as one node at once."""
        self._renewed_at = now  # the first renewal round is one interval after the start
        released = await self._catalog.calls.release_streams_of(
            self._node, keep=self._prefix, now=now
        )
        if released:
            log.info("released %d stream lease(s) of an earlier process of this node", released)
        return released

    async def claim(
        self, tenant: str, call_id: str, *, peer: str | None, holder: str, now: datetime
    ) -> tuple[datetime, datetime | None]:
        """Attach stream ``holder`` to the call in the catalog and return when its lease
        ends and when the call first streamed (on any node: the origin of its timeline,
        ``CallSession.attach``), or raise the ``StreamRefused`` that says why not.
        ``peer``: an AudioSocket connection's address (``None`` for the WebSocket
        transports, whose refusal of a second stream is ``call_in_progress``). The lease
        of a stream of this node that is gone and not yet released (the PBX reconnects
        while the release is in flight, or after it failed) is taken over: the PBX is not
        kept waiting on its own old connection."""
        key = (tenant, call_id)
        gone = self._releasing.get(key)
        until = now + LEASE_TTL
        outcome = await self._catalog.calls.claim_stream(
            tenant,
            call_id,
            peer=peer,
            holder=holder,
            now=now,
            until=until,
            replaces=gone[0] if gone else None,
        )
        if outcome == "already_attached" and peer is None:
            raise StreamRefused(
                f"Call {call_id!r} is already streaming on another connection.",
                code="call_in_progress",
            )
        if outcome != "attached":
            raise StreamRefused(f"Call {call_id!r} {_REFUSALS[outcome]}.", code=outcome)
        if gone is not None and self._releasing.get(key) == gone:
            del self._releasing[key]  # taken over: nothing left to release
            # Nor to publish: the session records on here, what it still buffers with it.
            self._unflushed.pop(key, None)
        lease = await self._catalog.calls.stream_lease(tenant, call_id)
        return until, lease.first_streamed_at

    def release(
        self, session: CallSession | None, tenant: str, call_id: str, holder: str, now: datetime
    ) -> asyncio.Task[None]:
        """Detach ``holder`` in the catalog if it still holds the call, once the audio its
        ``session`` holds is published (a track that cannot be is left in the spool for
        the recovery pass: an AI job of the call, if it ends on another node, waits for
        it). It runs as a task of its own, which the connection's handler awaits:
        a handler cancelled as its socket closes does not cut it short (``settle`` awaits
        the last ones at shutdown). Never fails: a publish that fails keeps the lease
        (renewed) and is retried at each renewal, and so is a release that fails (until it
        succeeds, the lease is taken over by this node's next claim of the call, or runs
        out; or, for a publish, the call ends here)."""
        # Marked before anything else: this node's next claim of the call takes it over.
        self._releasing[(tenant, call_id)] = (holder, now)
        task = asyncio.create_task(self._flush_and_release(session, tenant, call_id, holder, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def settle(self) -> None:
        """Wait for the releases under way (at shutdown, before the calls are finalized)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _flush_and_release(
        self, session: CallSession | None, tenant: str, call_id: str, holder: str, now: datetime
    ) -> None:
        if session is not None and not session.ended:
            # Published, not only flushed: each stint of a call on a node has objects of
            # its own, so a call that comes back here after another node carried it never
            # appends to an object created before that node's (objects are read in the
            # order they were created).
            self._flushing.add(holder)
            try:
                published = await self._publish(session, now)
            finally:
                self._flushing.discard(holder)
            if not published and self._releasing.get((tenant, call_id)) == (holder, now):
                # Kept: no other node may take the call (nor end it) without this part.
                self._unflushed[(tenant, call_id)] = (session, holder, now)
                return
        await self._release(tenant, call_id, holder, now)

    async def _publish(self, session: CallSession, now: datetime) -> bool:
        """Publish what ``session`` recorded; whether all of it was (failures logged)."""
        try:
            return await session.publish(now)
        except CallvaultError as e:
            log.warning(
                "call %s: its audio could not be published (retried): %s",
                session.call_id,
                e.code,
                extra={"tenant": session.tenant, "call_id": session.call_id, "code": e.code},
            )
            return False

    async def _retry(self, now: datetime) -> None:
        """Retry the publishes and then the releases that failed (every renewal)."""
        for key, (session, holder, went) in list(self._unflushed.items()):
            if self._releasing.get(key) != (holder, went):
                del self._unflushed[key]  # taken over by a claim of this node meanwhile
            elif session.ended or await self._publish(session, now):
                # Ended here: its finish committed (or left to the recovery pass) the rest.
                del self._unflushed[key]
        for (tenant, call_id), (holder, went) in list(self._releasing.items()):
            if holder not in self._flushing and (tenant, call_id) not in self._unflushed:
                await self._release(tenant, call_id, holder, went)

    async def _release(self, tenant: str, call_id: str, holder: str, now: datetime) -> None:
        try:
            await self._catalog.calls.release_stream(tenant, call_id, holder, now)
        except CallvaultError as e:
            log.warning(
                "call %s: its stream lease could not be released (retried): %s",
                call_id,
                e.code,
                extra={"tenant": tenant, "call_id": call_id, "code": e.code},
            )
            return
        if self._releasing.get((tenant, call_id)) == (holder, now):
            del self._releasing[(tenant, call_id)]

    async def renew(self, sessions: Iterable[CallSession], now: datetime) -> None:
        """Every ``LEASE_RENEWAL`` (else nothing): retry the releases that failed, renew the
        lease of every stream attached here, and publish what this node recorded of a call
        it waits on while another node's stream carries it (or ended it). Then, every time,
        a stream whose lease was lost (this node stalled past it and another stream took the
        call) or ran out (its renewals failed: this node may be cut off from the catalog
        while another carries the call) is detached: its audio is no longer taken (its
        ``StreamBinding`` refuses it) and what it recorded is published."""
        sessions = list(sessions)
        lost: list[tuple[CallSession, str]] = []
        if self._renewed_at is None or now - self._renewed_at >= LEASE_RENEWAL:
            self._renewed_at = now
            await self._retry(now)
            lost = await self._renew(sessions, now)
            await self._publish_moved(sessions, now)
        for session in sessions:
            if session.holder is not None and session.lease_lapsed(now):
                lost.append((session, session.holder))
        for session, holder in lost:
            if session.holder != holder:
                continue  # it detached meanwhile
            log.warning(
                "call %s: its stream lease was lost or ran out; its stream is refused",
                session.call_id,
                extra={"tenant": session.tenant, "call_id": session.call_id},
            )
            session.detach(now, holder=holder)
            await session.publish(now)

    async def _publish_moved(self, sessions: list[CallSession], now: datetime) -> None:
        """The calls this node waits on with audio it has not published: if a stream on
        another node carries one now, or it ended there, that audio is published now (not
        when this node's reconnect grace runs out), so the recording is whole."""
        for session in sessions:
            if (
                not streamed(session)
                or session.attached
                or session.ended
                or session.closing
                or not session.unpublished()
            ):
                continue
            try:
                await self.elsewhere(session, now)
            except CallvaultError as e:  # the next renewal looks again
                log.warning(
                    "call %s: its stream lease could not be read: %s",
                    session.call_id,
                    e.code,
                    extra={"tenant": session.tenant, "call_id": session.call_id, "code": e.code},
                )

    async def _renew(
        self, sessions: list[CallSession], now: datetime
    ) -> list[tuple[CallSession, str]]:
        """Renew the leases of the streams attached here, and of those gone whose audio
        is not published yet (``_unflushed``); the attached ones that were lost."""
        held = [(session, session.holder) for session in sessions if session.holder]
        kept = [
            (tenant, call_id, holder)
            for (tenant, call_id), (_, holder, _) in self._unflushed.items()
        ]
        if not held and not kept:
            return []
        until = now + LEASE_TTL
        try:
            renewed = await self._catalog.calls.renew_streams(
                [(session.tenant, session.call_id, holder) for session, holder in held] + kept,
                until=until,
            )
        except CallvaultError as e:
            log.warning("stream leases could not be renewed: %s", e.code)
            return []  # they run out where they are
        lost = []
        for session, holder in held:
            if session.holder != holder:
                continue  # it detached meanwhile
            key = (session.tenant, session.call_id)
            if key in renewed.renewed:
                session.lease_until = until
                # A pause or resume sent through another node takes effect here now.
                session.paused = renewed.renewed[key]
            elif key in renewed.ended:
                # Ended on another node: its stream hears ``call_ended`` at its next frame
                # or stop, and the ticker publishes what this node recorded.
                session.closing = session.closing or "ended_elsewhere"
            else:
                lost.append((session, holder))
        return lost

    async def expiry(self, session: CallSession, now: datetime) -> EndReason | None:
        """``session.expiry``, but a streamed call that a stream on another node carried
        more recently than this process saw (or carries now) waits for its grace from then:
        a node never ends a call that another node records. Nor at its maximum duration on
        the wall clock: the node that carries it ends it then."""
        reason = session.expiry(now)
        if not streamed(session) or session.attached:
            return reason
        if reason in ("reconnect_timeout", "start_timeout"):
            await self.elsewhere(session, now)
            reason = session.expiry(now)
        elif reason == "max_duration" and session.closing is None:
            lease = await self.elsewhere(session, now)
            if self.held_elsewhere(lease, now):
                return None
        return reason

    def held_elsewhere(self, lease: StreamLease, now: datetime) -> bool:
        """A stream of another process (another node) carries the live call at ``now``. One
        of this process's own streams that is gone but whose release has not reached the
        catalog yet is not one: no other node may have the call while its lease stands."""
        return (
            not lease.ended
            and lease.held_by_other(None, now)
            and not (lease.attached_by or "").startswith(self._prefix)
        )

    async def elsewhere(self, session: CallSession, now: datetime) -> StreamLease:
        """The lease of a call that no stream of this process carries. If a stream
        elsewhere carries it now, or the call ended there, what was recorded here is
        published at once (not when the call ends here), and the reconnect grace counts
        from the last time it was seen carried anywhere."""
        lease = await self._catalog.calls.stream_lease(session.tenant, session.call_id)
        if lease.ended:
            await session.publish(now)
            return lease
        if lease.attached_until is None or (lease.attached_by or "").startswith(self._prefix):
            return lease  # never carried; or by a stream of this process, its release pending
        if self.held_elsewhere(lease, now):
            await session.publish(now)
        session.seen_attached(lease.attached_until)
        return lease
