"""What every ingest connection does with its parser's events, whatever the transport.

The transports differ only in framing (their sans-I/O parsers) and in how a stream proves
who it is: a pbx token on the WebSocket upgrade or inside Twilio's ``start``, or, for
AudioSocket, the secret id the gateway minted when the call was announced (its stream is
also held to the address it first came from). From ``StreamStart`` on they are the same: the
call must be known and accepted (or, for an unannounced call, the policy accepts it now),
the stream claims it in the catalog before it touches the session, so that one stream at a
time carries a call across every node sharing the catalog (``gateway.attachments``), and
only then does audio reach the call's session. Anything else ends the stream with an
``IngestError`` whose code the transport sends back (close reason or 0xff frame); a frame
past the call's maximum duration (``max_duration``) also ends the call, which is kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime

from crypto.errors import CallvaultError
from gateway.auth import Principal, authenticate
from gateway.calls import CallRegistry, parse_announcement, refusal_of
from gateway.errors import MaxDurationReached, PolicyRefused, StreamRefused, Unauthorized
from gateway.ingest.events import Audio, Dtmf, Event, StreamStart, StreamStop
from gateway.metrics import GatewayMetrics
from gateway.session import CallSession, EndReason
from storage.catalog import Call, Catalog
from storage.errors import NotFound

log = logging.getLogger(__name__)

UNANNOUNCED_FIELDS = ("from", "to", "direction", "consent")


class StreamBinding:
    """Links one ingest connection to the session of the call it carries."""

    def __init__(
        self,
        *,
        transport: str,
        registry: CallRegistry,
        catalog: Catalog,
        metrics: GatewayMetrics,
        principal: Principal | None = None,
        peer: str | None = None,
    ) -> None:
        """``peer``: AudioSocket's peer address (see ``gateway.attachments``)."""
        self.transport = transport
        self._registry = registry
        self._catalog = catalog
        self._metrics = metrics
        self._principal = principal
        self._peer = peer
        self._holder = registry.attachments.new_holder()
        """This connection's name in the catalog's lease of its call."""
        self._claimed: tuple[str, str] | None = None
        """The (tenant, call id) this connection claimed, to release at the end."""
        self._lease_until: datetime | None = None
        """When the lease of its claim ends unless renewed."""
        self._origin: datetime | None = None
        """When the call first streamed, on any node: its timeline's origin."""
        self._frames = metrics.frames_in.labels(transport)
        self.session: CallSession | None = None
        self.stopped = False

    async def handle(self, events: Sequence[Event], now: datetime) -> bool:
        """Apply the events; ``True`` once the stream has ended the call (stop, hangup)."""
        taken = 0  # audio frames taken, counted once per call (a fork frame is two)
        # Placed, and a flush is due: once, after the run (or before a control event). A
        # frame refused after it leaves that flush to the call's end or the stream's
        # release, which flush and publish what is buffered; and counts what was placed.
        due: CallSession | None = None
        try:
            for event in events:
                if event.__class__ is not Audio:
                    if due is not None:  # the audio before it is flushed first, as it came
                        flushing: CallSession = due
                        due = None
                        await flushing.flush_placed(now)
                    if await self._control(event, now):
                        return True
                    continue
                session = self.session
                assert session is not None  # noqa: S101 - parsers refuse audio before start
                if session.ended or session.closing:
                    # First: an ended call says so (and why, if it reached its limit),
                    # whoever held it.
                    raise session.ended_refusal()
                self._refuse_if_revoked(session)
                self._refuse_if_lease_lost(session, now)
                try:
                    if session.placing_now:
                        # A fork frame's two tracks, an AudioSocket read's frames: placed
                        # one by one, flushed once (CallSession.receive, run by run).
                        if session.place(event, now):
                            due = session
                    else:
                        await session.receive(event, now)
                except MaxDurationReached:
                    await self._end_at_limit(session, now)
                    raise
                taken += 1
            if due is not None:
                await due.flush_placed(now)
        finally:
            if taken:
                self._frames.inc(taken)
        return False

    async def _control(self, event: Event, now: datetime) -> bool:
        """Apply an event other than audio; ``True`` once it ended the call."""
        if isinstance(event, StreamStart):
            self.session = await self._start(event, now)
        elif isinstance(event, StreamStop):
            current = self.session
            if current is not None and not (current.ended or current.closing):
                # A revoked token, or a stream whose lease was lost (another node may
                # carry the call now), may not end the call any more than send it
                # audio. A stop for a call that has ended is the no-op it always was.
                self._refuse_if_revoked(current)
                self._refuse_if_lease_lost(current, now)
            if event.reason == "client_error":
                self.drop(now)  # the PBX's side failed: wait for it to come back
            else:
                await self._stop(event, now)
            return True
        elif isinstance(event, Dtmf):
            self._metrics.dtmf_events.labels(self.transport).inc()  # never the digit:
            # a DTMF digit may be a card number (PCI DSS), so none is stored or logged
        return False  # a Mark: nothing to do

    def _refuse_if_revoked(self, session: CallSession) -> None:
        """The token this stream authenticated with was revoked or expired, on any node
        (``gateway.revalidation``): not a frame more from it, nor its stop; the call waits
        for a reconnect with an active token, as after a drop."""
        if session.token_revoked and self._peer is None:  # AudioSocket holds no token
            raise StreamRefused(
                "The stream's token was revoked or has expired.", code="unauthorized"
            )

    def _refuse_if_lease_lost(self, session: CallSession, now: datetime) -> None:
        """This stream's lease was lost, or ran out (its renewals failed): another
        connection, perhaps on another node, may carry the call now, so not a frame more
        from this one, nor its stop; the call is left as it is."""
        if session.holder != self._holder or session.lease_lapsed(now):
            raise StreamRefused(
                f"Call {session.call_id!r} is carried by another connection.",
                code="call_in_progress" if self._peer is None else "already_attached",
            )

    async def _start(self, event: StreamStart, now: datetime) -> CallSession:
        token_id: str | None = None
        try:
            if self.transport == "audiosocket":
                # Its UUID frame carries the id as the token: a secret, never a call id.
                tenant, call_id = await self._registry.find_audiosocket_call(event.token)
                actor = "audiosocket"
            else:
                if not event.call_id:
                    raise StreamRefused("The stream names no call.", code="unknown_call")
                call_id = event.call_id
                principal = await self._authenticate(event, now)
                assert principal.tenant is not None  # noqa: S101 - pbx tokens have a tenant
                tenant, actor = principal.tenant, principal.actor
                token_id = principal.token_id
            # The catalog first: it refuses what another node or an earlier process
            # attached, before this process takes the call up.
            session = await self._claim(tenant, call_id, event, actor, now)
        except StreamRefused:
            raise
        except (NotFound, PolicyRefused) as e:
            raise refusal_of(e) from None
        self._refuse_if_mismatched(session.call, event)
        session.attach(
            now,
            peer=self._peer,
            holder=self._holder,
            lease_until=self._lease_until,
            token_id=token_id,
            origin=self._origin,
        )
        log.info(
            "call %s: %s stream started",
            call_id,
            self.transport,
            extra={"tenant": session.tenant, "call_id": call_id, "transport": self.transport},
        )
        return session

    async def _claim(
        self, tenant: str, call_id: str, event: StreamStart, actor: str, now: datetime
    ) -> CallSession:
        """Claim the call for this stream in the catalog, then its session. A WebSocket
        stream may describe a call that was not announced: it is announced first. A stream
        of another transport or codec than the call's is refused before it claims anything
        (the call's lease, its row's node)."""
        try:
            call = await self._catalog.calls.get(tenant, call_id)
        except NotFound:
            pass  # announced below, if the stream describes it
        else:
            if call.refusal_code is None and call.ended_at is None:
                self._refuse_if_mismatched(call, event)
        try:
            self._lease_until, self._origin = await self._registry.claim_stream(
                tenant, call_id, peer=self._peer, holder=self._holder, now=now
            )
        except NotFound:
            if self._peer is not None:
                raise
            announced = await self._session(tenant, call_id, event, actor, now)
            self._lease_until, self._origin = await self._registry.claim_stream(
                tenant, call_id, peer=None, holder=self._holder, now=now
            )
            self._claimed = (tenant, call_id)
            return announced
        except StreamRefused as e:
            if e.code != "call_ended":
                raise
            # Ended, or refused when announced: the session says which, as it always has
            # (a refused call's stream meets the refusal's code).
            await self._registry.session(tenant, call_id, now)
            raise
        self._claimed = (tenant, call_id)
        return await self._session(tenant, call_id, event, actor, now, carry=True)

    def _refuse_if_mismatched(self, call: Call, event: StreamStart) -> None:
        if call.transport != self.transport:
            raise StreamRefused(
                f"Call {call.id!r} was announced for {call.transport}, not {self.transport}.",
                code="transport_mismatch",
            )
        if (call.codec, call.sample_rate) != (event.codec, event.sample_rate):
            raise StreamRefused(
                f"Call {call.id!r} was announced as {call.codec} {call.sample_rate} Hz; this "
                f"stream carries {event.codec} {event.sample_rate} Hz.",
                code="codec_mismatch",
            )

    async def _authenticate(self, event: StreamStart, now: datetime) -> Principal:
        principal = self._principal
        if principal is None:
            try:
                principal = await authenticate(self._catalog, event.token, now=now)
            except Unauthorized as e:
                raise StreamRefused(e.message, code="unauthorized") from None
        if principal.role != "pbx":
            raise StreamRefused("Only a pbx token may push audio.", code="forbidden")
        return principal

    async def _session(
        self,
        tenant: str,
        call_id: str,
        event: StreamStart,
        actor: str,
        now: datetime,
        *,
        carry: bool = False,
    ) -> CallSession:
        """``carry``: this stream holds the call's lease (``CallRegistry.session``)."""
        try:
            return await self._registry.session(tenant, call_id, now, carry=carry)
        except NotFound:
            if not {"from", "to"} <= event.parameters.keys():
                raise StreamRefused(
                    f"Call {call_id!r} was not announced, and the stream does not describe "
                    "it (from, to, consent).",
                    code="unknown_call",
                ) from None
        body: dict[str, object] = {
            key: event.parameters[key] for key in UNANNOUNCED_FIELDS if key in event.parameters
        }
        body.update(
            call_id=call_id,
            transport=self.transport,
            codec=event.codec,
            sample_rate=event.sample_rate,
        )
        try:
            announcement = parse_announcement(body)
            await self._registry.announce(tenant, announcement, actor=actor, now=now)
        except CallvaultError as e:
            raise refusal_of(e) from None
        return await self._registry.session(tenant, call_id, now)

    async def _stop(self, event: StreamStop, now: datetime) -> None:
        self.stopped = True
        if self.session is not None:
            session = self.session
            reason: EndReason = "stop" if event.reason == "stop" else "hangup"
            await self._registry.end(session.tenant, session.call_id, now=now, reason=reason)

    async def _end_at_limit(self, session: CallSession, now: datetime) -> None:
        """A frame passed the call's maximum duration: the call ends now, with what it has
        (its recording kept, its AI job queued), before the stream hears why. A finish
        that fails is left to the ticker (the session is closing), and the refusal is sent
        all the same."""
        self.stopped = True
        try:
            await self._registry.end(
                session.tenant, session.call_id, now=now, reason="max_duration"
            )
        except CallvaultError as e:
            log.warning(
                "call %s reached its maximum duration; ending it failed: %s",
                session.call_id,
                e.code,
                extra={"tenant": session.tenant, "call_id": session.call_id, "code": e.code},
            )

    async def release(self, now: datetime) -> None:
        """The connection is gone; its claim on the call (if it still holds it) is released
        in the catalog once its audio is in the spool, so that the PBX may reconnect, on
        any node, at once."""
        if self._claimed is not None:
            tenant, call_id = self._claimed
            self._claimed = None
            released = self._registry.attachments.release(
                self.session, tenant, call_id, self._holder, now
            )
            await asyncio.shield(released)

    def drop(self, now: datetime) -> None:
        """The connection is gone. Without a stop, the call waits for a reconnect."""
        if self.session is not None and not self.stopped:
            self.session.detach(now, holder=self._holder)
            log.info(
                "call %s: %s stream dropped",
                self.session.call_id,
                self.transport,
                extra={
                    "tenant": self.session.tenant,
                    "call_id": self.session.call_id,
                    "transport": self.transport,
                },
            )
