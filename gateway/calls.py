"""Announcing calls and keeping the live ones: the gateway's switchboard.

Every accepted call passes through ``CallRegistry.announce``, whether the PBX announced it
over the API or described it in its stream's ``start`` (Twilio ``customParameters``): the
tenant's current instructions are loaded, ``policy.decide`` rules, and the call record is
stored either way. A refusal stores nothing but that record and an audit event, and raises
``PolicyRefused``. An accepted call gets its recording row and a ``CallSession`` that lives
here until the call ends.

``tick`` is driven by the app's ticker task with the time passed in: it flushes sessions
whose stream went quiet, renews the leases of the streams this node carries
(``gateway.attachments``: one stream per call across the fleet), and ends calls whose stream
dropped and did not come back (a streamed call only once no stream anywhere carries it) or
that reached their maximum duration (``calls.max_duration``: on the wall clock since their
first stream, or an RTP frame past it on their timeline).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from crypto.errors import CallvaultError
from gateway.attachments import Attachments, streamed
from gateway.errors import (
    BadRequest,
    IngestError,
    LimitExceeded,
    PolicyRefused,
    SpoolFull,
    StreamRefused,
    invalid_body,
)
from gateway.metrics import GatewayMetrics
from gateway.policy import CallFacts, Decision, Refusal, decide
from gateway.revalidation import Revalidation
from gateway.session import AUDIO_KIND, CallSession, EndReason, SessionLimits
from storage.catalog import AuditEntry, Call, Catalog, Recording, TenantLimits
from storage.errors import LimitReached, NotFound
from storage.instructions import normalize_number
from storage.media.codecs import codec as media_codec
from storage.media.tracks import RecordParser, track_frames
from storage.vault import MediaVault

log = logging.getLogger(__name__)

Transport = Literal["twilio", "fork", "audiosocket", "rtp"]

# What each transport carries, the first entry being the default when none is announced.
TRANSPORT_CODECS: dict[str, tuple[str, ...]] = {
    "twilio": ("pcmu",),
    "fork": ("l16",),
    "audiosocket": ("l16",),
    "rtp": ("pcmu", "pcma", "opus"),
}
TRANSPORT_RATES: dict[str, tuple[int, ...]] = {
    "twilio": (8000,),
    "fork": (8000, 16000, 24000, 48000),
    "audiosocket": (8000,),
    "rtp": (8000, 48000),
}
RTP_CODEC_RATES = {"pcmu": 8000, "pcma": 8000, "opus": 48000}
"""RTP's clock rate for each codec it carries (RFC 3551; RFC 7587: Opus is always 48 kHz)."""

TICK_S = 0.25
"""How often the app's ticker runs ``CallRegistry.tick`` (wall-clock seconds): quiet streams
flushed, expired calls ended, live calls revalidated (``gateway.revalidation``)."""

CALL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
NUMBER = Annotated[str, Field(min_length=1, max_length=64)]
DYNAMIC_PT = Annotated[int, Field(ge=96, le=127)]


class RtpPayloadTypes(BaseModel):
    """The dynamic RTP payload types the PBX negotiated (its SDP), when they matter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    opus: DYNAMIC_PT | None = None
    """Opus's payload type; default: any dynamic type but the telephone events'."""
    telephone_event: DYNAMIC_PT = 101
    """RFC 4733 telephone events' payload type. Default 101."""

    @model_validator(mode="after")
    def _distinct(self) -> RtpPayloadTypes:
        if self.opus is not None and self.opus == self.telephone_event:
            raise ValueError("opus and telephone_event must be different payload types")
        return self


class CallAnnouncement(BaseModel):
    """The body of ``POST /v1/tenants/{tenant}/calls`` (API.md); unknown fields are refused
    so that a misspelt ``consent`` cannot silently become ``not_asked``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    call_id: str | None = Field(default=None, pattern=CALL_ID_PATTERN)
    from_number: NUMBER = Field(alias="from")
    to_number: NUMBER = Field(alias="to")
    direction: Literal["inbound", "outbound"] = "inbound"
    consent: Literal["granted", "denied", "not_asked"] = "not_asked"
    transport: Transport
    codec: Literal["pcmu", "pcma", "opus", "l16"] | None = None
    sample_rate: int | None = None
    srtp: bool | None = None
    payload_types: RtpPayloadTypes | None = None


def parse_announcement(data: object) -> CallAnnouncement:
    """The announcement in ``data``; ``BadRequest`` naming the first bad field."""
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object.", code="invalid_call")
    try:
        announcement = CallAnnouncement.model_validate(data)
    except ValidationError as e:
        raise invalid_body(e, "invalid_call") from None
    transport = announcement.transport
    codec = announcement.codec or TRANSPORT_CODECS[transport][0]
    if codec not in TRANSPORT_CODECS[transport]:
        raise BadRequest(
            f"codec: {transport} carries {', '.join(TRANSPORT_CODECS[transport])}, not {codec}.",
            code="unsupported_codec",
        )
    default_rate = RTP_CODEC_RATES[codec] if transport == "rtp" else TRANSPORT_RATES[transport][0]
    rate = announcement.sample_rate or default_rate
    if transport == "rtp" and rate != RTP_CODEC_RATES[codec]:
        raise BadRequest(
            f"sample_rate: {codec} over RTP is {RTP_CODEC_RATES[codec]} Hz, not {rate}.",
            code="unsupported_codec",
        )
    if transport != "rtp" and (announcement.srtp or announcement.payload_types):
        field = "srtp" if announcement.srtp else "payload_types"
        raise BadRequest(f"{field}: only an rtp call has it.", code="invalid_call")
    if rate not in TRANSPORT_RATES[transport]:
        rates = ", ".join(str(r) for r in TRANSPORT_RATES[transport])
        raise BadRequest(
            f"sample_rate: {transport} carries {rates} Hz, not {rate}.",
            code="unsupported_codec",
        )
    return announcement.model_copy(
        update={
            "codec": codec,
            "sample_rate": rate,
            # SRTP unless the PBX says otherwise; plain RTP also needs the instructions.
            "srtp": transport == "rtp" and announcement.srtp is not False,
            "call_id": announcement.call_id or str(uuid.uuid4()),
            "from_number": _canonical(announcement.from_number),
            "to_number": _canonical(announcement.to_number),
        }
    )


def _canonical(party: str) -> str:
    """A phone number in the one form the catalog stores and searches (``+40712345678``);
    anything else a PBX may send for a party (``anonymous``, a SIP URI) is kept as given."""
    try:
        return normalize_number(party)
    except ValueError:
        return party


class CallTransport(Protocol):
    """A transport that holds resources per call outside any connection (RTP's ports)."""

    def closing(self, session: CallSession, now: datetime) -> None:
        """The call is about to be finalized: hand the session what is still held."""

    def ended(self, session: CallSession) -> None:
        """The call is finalized: release what it held."""


@dataclass(frozen=True, slots=True)
class Announced:
    call: Call
    recording: Recording
    decision: Decision
    # repr=False: a value may reach a log line or a test's failure output; the id must not.
    audiosocket_id: str | None = field(default=None, repr=False)
    """audiosocket calls: the secret id their PBX names them by. It exists only here and in
    the announcement's answer; the catalog keeps its hash."""


def new_audiosocket_id() -> str:
    """A fresh AudioSocket id. AudioSocket has no authentication of its own: this id, shown
    once, is the stream's only credential. uuid4 draws from os.urandom."""
    return str(uuid.uuid4())


def audiosocket_id_hash(audiosocket_id: str) -> str | None:
    """The hash the catalog finds an AudioSocket id by; ``None`` for a string that is not
    a UUID (no call has it). SHA-256 suffices, unkeyed: the id is 122 random bits, so the
    hash cannot be reversed by guessing, and a stolen catalog row opens no stream."""
    try:
        raw = uuid.UUID(audiosocket_id).bytes
    except ValueError:
        return None
    return hashlib.sha256(raw).hexdigest()


class CallRegistry:
    """Announces calls and holds the sessions of the live ones."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        vault: MediaVault,
        limits: SessionLimits,
        metrics: GatewayMetrics,
        tenant_limits: TenantLimits | None = None,
        node_id: str | None = None,
    ) -> None:
        """``tenant_limits``: every tenant's default limits (the operator may override them
        per tenant); ``None`` checks none. ``node_id``: this node's id in the registry,
        noted on the calls it takes (``gateway.nodes``) and naming the streams it carries in
        the catalog (``gateway.attachments``)."""
        self.node_id = node_id
        self._catalog = catalog
        self._vault = vault
        self._limits = limits
        self._metrics = metrics
        self._tenant_limits = tenant_limits
        self._sessions: dict[tuple[str, str], CallSession] = {}
        self._transports: list[CallTransport] = []
        self.attachments = Attachments(catalog, node=node_id)
        self.revalidation = Revalidation(catalog)
        self._ticking = asyncio.Lock()

    def add_transport(self, transport: CallTransport) -> None:
        """Tell ``transport`` when each call ends."""
        self._transports.append(transport)

    def live(self) -> list[CallSession]:
        return list(self._sessions.values())

    async def announce(
        self, tenant: str, announcement: CallAnnouncement, *, actor: str, now: datetime
    ) -> Announced:
        """Decide and record the call; ``PolicyRefused`` (after storing the CDR and an audit
        event) when the tenant's instructions do not allow it, ``LimitExceeded`` (likewise)
        when one more call would exceed a limit of the tenant; ``SpoolFull`` (storing
        nothing: the PBX may take the same call elsewhere) while the spool is full."""
        assert announcement.call_id and announcement.codec and announcement.sample_rate  # noqa: S101
        self._refuse_if_spool_full()
        await self._catalog.tenants.get(tenant)
        current = await self._catalog.instructions.current(tenant)
        instructions, version = current.document, current.version
        facts = CallFacts(
            from_number=announcement.from_number,
            to_number=announcement.to_number,
            direction=announcement.direction,
            consent=announcement.consent,
            unencrypted=announcement.transport == "rtp" and not announcement.srtp,
        )
        outcome = decide(facts, instructions, version, now)
        audiosocket_id: str | None = None
        if isinstance(outcome, Refusal):
            recording_id = None
            event = AuditEntry(
                actor=actor,
                action="call.refused",
                object=announcement.call_id,
                detail={"code": outcome.code, "instructions_version": version},
            )
        else:
            recording_id = "rec_" + secrets.token_hex(12)
            event = AuditEntry(
                actor=actor,
                action="recording.created",
                object=recording_id,
                detail={
                    "call_id": announcement.call_id,
                    "instructions_version": version,
                    "decision": outcome.document(),
                    # For rtp calls: whether the audio travels encrypted (plain RTP is
                    # allowed only by the instructions, so the audit trail shows which calls
                    # used it).
                    **({"srtp": announcement.srtp} if announcement.transport == "rtp" else {}),
                },
            )
            if announcement.transport == "audiosocket":
                audiosocket_id = new_audiosocket_id()
        # The call record, its recording and the decision's audit event commit together,
        # after the tenant's limits are counted in the same transaction.
        try:
            call, recording = await self._catalog.calls.announce(
                id=announcement.call_id,
                tenant_id=tenant,
                from_number=announcement.from_number,
                to_number=announcement.to_number,
                direction=announcement.direction,
                consent=announcement.consent,
                transport=announcement.transport,
                codec=announcement.codec,
                sample_rate=announcement.sample_rate,
                instructions_version=version,
                decision={"store_recording": False, "ai": []}
                if isinstance(outcome, Refusal)
                else outcome.document(),
                refusal_code=outcome.code if isinstance(outcome, Refusal) else None,
                started_at=now,
                recording_id=recording_id,
                audit=event,
                audiosocket_id_hash=audiosocket_id_hash(audiosocket_id) if audiosocket_id else None,
                limits=self._tenant_limits,
                node_id=self.node_id,
            )
        except LimitReached as e:
            self._metrics.refusals.labels(e.code).inc()
            log.info(
                "call %s refused: %s %s",
                announcement.call_id,
                e.code,
                e.limit,
                extra={"tenant": tenant, "call_id": announcement.call_id, "code": e.code},
            )
            raise LimitExceeded.of(e) from None
        if isinstance(outcome, Refusal):
            self._metrics.refusals.labels(outcome.code).inc()
            log.info(
                "call %s refused: %s",
                call.id,
                outcome.code,
                extra={"tenant": tenant, "call_id": call.id, "code": outcome.code},
            )
            raise outcome.error()
        assert recording is not None  # noqa: S101 - an accepted call always has one
        self._register(self._new_session(call, recording))
        log.info(
            "call %s accepted",
            call.id,
            extra={"tenant": tenant, "call_id": call.id, "recording_id": recording.id},
        )
        return Announced(
            call=call, recording=recording, decision=outcome, audiosocket_id=audiosocket_id
        )

    def _refuse_if_spool_full(self) -> None:
        """A new call may not start while the spool is at its bound; calls already
        recording go on (``storage.spool``)."""
        spool = self._vault.spool
        if spool is not None and spool.full:
            self._metrics.spool_full_refusals.inc()
            raise SpoolFull(
                f"The spool holds {spool.held_bytes} bytes (calls in progress and audio "
                f"waiting for the object store), at its bound of {spool.max_bytes} "
                "(CALLVAULT_INGEST__SPOOL_MAX_BYTES): new calls are refused, calls in progress "
                "go on. Retry later or on another node."
            )

    def _new_session(self, call: Call, recording: Recording) -> CallSession:
        return CallSession(
            call=call,
            recording=recording,
            vault=self._vault,
            limits=self._limits,
            metrics=self._metrics,
        )

    def _register(self, session: CallSession) -> None:
        self._sessions[(session.tenant, session.call_id)] = session
        self._metrics.active_calls.set(len(self._sessions))

    def _forget(self, session: CallSession) -> None:
        self._sessions.pop((session.tenant, session.call_id), None)
        self._metrics.active_calls.set(len(self._sessions))

    async def session(
        self, tenant: str, call_id: str, now: datetime, *, carry: bool = False
    ) -> CallSession:
        """The live session of the tenant's call, restored from the catalog if this process
        does not hold it (it restarted). ``NotFound`` for an unknown call;
        ``PolicyRefused`` with the refusal code for a refused one; ``StreamRefused``
        ``call_ended`` for one that has ended. ``carry``: the caller's stream has just
        claimed the call's lease, so a call restored here is taken over by this node
        (``_restore``); an API request or a look never takes a call over."""
        held = self._sessions.get((tenant, call_id))
        if held is not None:
            return held
        call = await self._catalog.calls.get(tenant, call_id)
        if call.refusal_code is not None:
            raise PolicyRefused(call.refusal_code, f"Call {call_id!r} was refused.")
        recording = await self._catalog.recordings.of_call(tenant, call_id)
        if call.ended_at is not None or recording is None or recording.status != "recording":
            raise StreamRefused(f"Call {call_id!r} has ended.", code="call_ended")
        return await self._restore(call, recording, now, take_over=carry)

    async def _restore(
        self, call: Call, recording: Recording, now: datetime, *, take_over: bool
    ) -> CallSession:
        """A session for a live call this process does not hold, its tracks ending where
        its committed audio ends (read back, a record at a time). ``take_over``: this
        process carries the call now (its stream holds the lease), so the call's row names
        this node. Otherwise (a spool recovery, an API request, a stream refused before its
        claim) it names the node it named: the node that carries the call, which another
        node settling it if it dies must find; a call that names no node (from before the
        registry) is taken over all the same."""
        ends = await self.track_ends(call, recording)
        # Another task may have restored it while this one was reading.
        held = self._sessions.get((call.tenant_id, call.id))
        if held is not None:
            return held
        if (
            self.node_id is not None
            and call.node_id != self.node_id
            and (take_over or call.node_id is None)
        ):
            # This node carries the call now: if it dies, the call is among its calls. A
            # call ended meanwhile (a node settling its dead node ended it, perhaps this
            # node's own watch) is refused as any ended call, never held live here.
            if not await self._catalog.calls.take_over(call.tenant_id, call.id, self.node_id):
                raise StreamRefused(f"Call {call.id!r} has ended.", code="call_ended")
        session = self._new_session(call, recording)
        session.restore(ends, now)
        self._register(session)
        log.info(
            "call %s taken up again",
            call.id,
            extra={"tenant": call.tenant_id, "call_id": call.id, "recording_id": recording.id},
        )
        return session

    async def track_ends(self, call: Call, recording: Recording) -> dict[str, int]:
        """Where each track of the call's committed audio ends (read back, a record at a
        time)."""
        ends: dict[str, int] = {}
        track_codec = media_codec(call.codec)
        for stored in await self._catalog.objects.list(
            call.tenant_id, recording_id=recording.id, state="committed"
        ):
            if stored.kind != AUDIO_KIND or stored.track is None:
                continue
            parser = RecordParser()
            end = 0
            async for chunk in await self._vault.open_object(call.tenant_id, stored.id):
                end = max(end, track_frames(parser.feed(chunk), track_codec))
            parser.finish()
            ends[stored.track] = max(ends.get(stored.track, 0), end)
        return ends

    async def set_paused(
        self, tenant: str, call_id: str, paused: bool, now: datetime
    ) -> CallSession:
        """Pause or resume the call. The catalog learns it first, so that a crash right
        after a pause cannot turn it into storing what the PBX asked to discard."""
        session = await self.session(tenant, call_id, now)
        if session.ended or session.closing:
            raise StreamRefused(f"Call {call_id!r} has ended.", code="call_ended")
        await self._catalog.calls.set_paused(tenant, call_id, paused)
        await (session.pause() if paused else session.resume())
        return session

    async def end(self, tenant: str, call_id: str, *, now: datetime, reason: EndReason) -> Call:
        """End the tenant's call; ending an ended (or refused) call is a no-op."""
        try:
            session = await self.session(tenant, call_id, now)
        except (PolicyRefused, StreamRefused):
            return await self._catalog.calls.get(tenant, call_id)
        await self._finish(session, now, reason)
        return await self._catalog.calls.get(tenant, call_id)

    async def end_for_dead_node(self, call: Call, now: datetime) -> bool:
        """End a live call that a node declared dead took (``node_dead``), with the audio
        that node published: its recording is finalized and its job queued as at any end.
        Nothing is done for a call this process carries (it took it up), nor if the node
        came back meanwhile (then it takes its calls up itself). ``True`` if it ended."""
        if (call.tenant_id, call.id) in self._sessions or call.node_id is None:
            return False
        recording = await self._catalog.recordings.of_call(call.tenant_id, call.id)
        if recording is None or recording.status != "recording":
            return False
        session = self._new_session(call, recording)
        session.restore(await self.track_ends(call, recording), now)
        finished = await session.finish(
            self._catalog, now, "node_dead", while_node_dead=call.node_id
        )
        return finished.status != "recording"

    async def end_tenant(self, tenant: str, *, now: datetime) -> None:
        for session in [s for s in self.live() if s.tenant == tenant]:
            await self._finish(session, now, "tenant_deleted")

    async def _discard(self, session: CallSession, now: datetime) -> None:
        """End a call whose tenant another node deleted, keeping nothing more of it."""
        for transport in self._transports:
            transport.closing(session, now)
        await session.discard(now, "tenant_deleted")
        self._forget(session)
        for transport in self._transports:
            transport.ended(session)

    async def _finish(
        self, session: CallSession, now: datetime, reason: EndReason, *, unless_moved: bool = False
    ) -> None:
        """``unless_moved``: a streamed call that a stream of another process carries when
        the catalog finalizes it is not ended (what this process holds of it is published,
        and it is forgotten here): a claim that landed after this process last looked."""
        for transport in self._transports:
            transport.closing(session, now)
        # Forgotten only once finalized: a finish that failed is retried by the ticker.
        await session.finish(
            self._catalog,
            now,
            reason,
            unless_carried_elsewhere=self.attachments.prefix
            if unless_moved and streamed(session)
            else None,
        )
        self._forget(session)
        for transport in self._transports:
            transport.ended(session)

    async def claim_stream(
        self, tenant: str, call_id: str, *, peer: str | None, holder: str, now: datetime
    ) -> tuple[datetime, datetime | None]:
        """Attach stream ``holder`` (from ``peer``, AudioSocket's connection address) to the
        call in the catalog (``Attachments.claim``) and return when its lease ends and the
        origin of the call's timeline (when it first streamed, on any node), or raise
        the ``StreamRefused`` that says why not; what this process already knows refuses
        without asking the catalog. ``NotFound`` for a call the catalog does not have."""
        held = self._sessions.get((tenant, call_id))
        refused = held.refusal(peer=peer) if held is not None else None
        if refused is not None:
            raise refused
        # A call this process announced but never carried may have been carried by
        # another node first: then its clock and its timeline start where that node's did,
        # as when a call is taken up (``_restore``), not afresh here.
        ends: dict[str, int] | None = None
        if held is not None and held.first_attached_at is None:
            before = await self._catalog.calls.stream_lease(tenant, call_id)
            if before.attached_until is not None:  # a stream elsewhere carried it
                ends = await self.track_ends(held.call, held.recording)
        claimed = await self.attachments.claim(tenant, call_id, peer=peer, holder=holder, now=now)
        if held is not None and ends is not None and held.first_attached_at is None:
            held.restore(ends, now)
        return claimed

    async def tick(self, now: datetime) -> None:
        """Flush quiet streams, renew stream leases, end calls that expired or whose tenant
        another node deleted (``gateway.revalidation``); one failing call never stops the
        others. One round at a time: a round asked for while another runs (the ticker's,
        an operator's or a test's) waits for it, so it never acts on half of its work."""
        async with self._ticking:
            await self._tick(now)

    async def _tick(self, now: datetime) -> None:
        try:
            await self.attachments.renew(self.live(), now)
        except CallvaultError as e:  # renew logs its own catalog failures; this is a guard
            log.warning("stream leases could not be renewed: %s", e.code)
        try:
            stale = await self.revalidation.check(self.live(), now)
        except CallvaultError as e:  # the next round checks again
            log.warning("live calls could not be checked against the catalog: %s", e.code)
        else:
            for session in stale.deleted:
                try:
                    await self._discard(session, now)
                except Exception as e:  # one call's failure must not stop the others
                    _log_tick_failure(session, "discarding it", e)
        for session in self.live():
            try:
                reason = await self.attachments.expiry(session, now)
                if reason is not None:
                    # Checked again where it is finalized, as at shutdown (a claim elsewhere
                    # may land after ``expiry`` looked; or the round read the closing reason
                    # of a shutdown's finish that found the call moved).
                    await self._finish(session, now, reason, unless_moved=True)
                else:
                    await session.flush_if_due(now)
            except Exception as e:  # one call's failure must not stop the others
                _log_tick_failure(session, "background flush or end", e)

    async def close(self, now: datetime) -> int:
        """Graceful shutdown: every live call is finalized with what arrived (a PBX that
        reconnects after the restart finds its call ended), but for a streamed call that a
        stream on another node carries now (also one whose claim lands while this node
        finalizes it: checked in the finishing transaction): that node records it on, and
        what this one recorded of it is published. How many calls could not be finalized
        (the catalog or the store failed): the node is then not marked stopped, so that the
        fleet ends them as a dead node's (``gateway.nodes``)."""
        await self.attachments.settle()
        unfinished = 0
        for session in self.live():
            try:
                if streamed(session) and not session.attached:
                    lease = await self.attachments.elsewhere(session, now)
                    if self.attachments.held_elsewhere(lease, now):
                        self._forget(session)
                        continue
                # Checked again where it is finalized: a claim on another node may land
                # between that look and the finish.
                await self._finish(session, now, "shutdown", unless_moved=True)
            except CallvaultError as e:
                unfinished += 1
                log.error(
                    "call %s could not be finalized at shutdown: %s",
                    session.call_id,
                    e.code,
                    extra={"tenant": session.tenant, "call_id": session.call_id, "code": e.code},
                )
        return unfinished

    async def recover(self, now: datetime) -> int:
        """Publish what crashed or failed uploads left in the spool, and take up the calls
        they belong to as if their stream had just dropped: a PBX that reconnects within
        the grace continues the same recording after the gap, otherwise the call is
        finalized with what was recovered. Returns how many objects were recovered. Safe to
        repeat: calls already finalized are left as they are."""
        recovered = await self._vault.recover_spooled(now=now)
        recordings = {
            (stored.tenant_id, stored.recording_id)
            for stored in recovered
            if stored.recording_id is not None
        }
        for tenant, recording_id in sorted(recordings):
            await self._take_up(tenant, recording_id, now)
        return len(recovered)

    async def take_up_orphans(self, now: datetime, *, unowned: bool = False) -> int:
        """Take up every recording still in progress that no process holds of the calls
        this node took: after a crash, also the calls that had no audio in the spool
        (announced and silent, or published by an earlier restart), so that each ends with
        its grace instead of staying 'recording' forever. ``unowned``: also those of calls
        from before the node registry (they name no node), for a catalog no other node
        shares. Without a node id (no registry), every one. Calls of other nodes are theirs
        to take up, or, when they die, the registry's to end (``gateway.nodes``)."""
        taken = 0
        for recording in await self._catalog.recordings.live(node_id=self.node_id, unowned=unowned):
            if await self._take_up(recording.tenant_id, recording.id, now):
                taken += 1
        return taken

    async def _take_up(self, tenant: str, recording_id: str, now: datetime) -> bool:
        try:
            recording = await self._catalog.recordings.get(tenant, recording_id)
            if recording.status != "recording" or (tenant, recording.call_id) in self._sessions:
                return False
            call = await self._catalog.calls.get(tenant, recording.call_id)
            await self._restore(call, recording, now, take_over=False)
        except CallvaultError as e:
            log.error("recording %s could not be taken up: %s", recording_id, e.code)
            return False
        return True

    async def find_audiosocket_call(self, audiosocket_id: str | None) -> tuple[str, str]:
        """The (tenant, call id) of the call an AudioSocket id was minted for. Anything else
        (an id never minted, a call id, another tenant's call id, a refused call's) is the
        same ``unknown_call``, whose message never repeats what the peer sent."""
        id_hash = audiosocket_id_hash(audiosocket_id) if audiosocket_id else None
        call = await self._catalog.calls.find_audiosocket(id_hash) if id_hash else None
        if call is None:
            raise StreamRefused("The AudioSocket id names no announced call.", code="unknown_call")
        return call.tenant_id, call.id


def _log_tick_failure(session: CallSession, what: str, error: Exception) -> None:
    """A ticker round's failure on one call: logged (a traceback only for what is not one
    of callvault's errors), the round goes on with the others."""
    code = error.code if isinstance(error, CallvaultError) else type(error).__name__
    log.warning(
        "call %s: %s failed: %s",
        session.call_id,
        what,
        code,
        exc_info=not isinstance(error, CallvaultError),
        extra={"tenant": session.tenant, "call_id": session.call_id, "code": code},
    )


def refusal_of(error: CallvaultError) -> IngestError:
    """A control-plane error met while starting a stream, as the stream's refusal (1008);
    an ingest error keeps its own close code (``spool_full`` and a tenant's
    ``limit_exceeded``: 1013, try again later)."""
    if isinstance(error, IngestError):
        return error
    if isinstance(error, NotFound):
        return StreamRefused(error.message, code="unknown_call")
    return StreamRefused(error.message, code=error.code)
