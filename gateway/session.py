"""Live call sessions: per-track buffers, pause/resume, timed flushes, reconnects, the end.

One ``CallSession`` exists per accepted call from its announcement (or its stream's
``start``) to its end, whichever connection carries its audio. Each track (inbound,
outbound) is sealed as its own streaming object whose plaintext is a sequence of
``storage.media.tracks`` records: raw codec bytes, untouched, with the sample offset where they
start on the call's timeline. So gaps (pause/resume, loss, a reconnect) cost nothing to store
and come back as silence in exports.

Where a frame lands on the timeline:

* frames with a stream timestamp (Twilio) land at ``base + timestamp``, except that a
  frame within ``JITTER_MS`` of the track's end continues it exactly (timestamps jitter);
* frames without one (fork, AudioSocket) continue the track;
* while the call is paused, frames are *discarded* but still advance the track, so the
  pause is kept as silence of the right length;
* a reconnecting stream starts at ``base`` = the later of the timeline's end and the
  wall-clock time since the first stream started (on any node: the catalog keeps when), so
  the outage is kept as silence too, and each node's part lands where it was heard;
* nothing lands past ``max_duration`` (``CALLVAULT_CALLS__MAX_DURATION``): a frame that
  would end past it is refused (``MaxDurationReached``), whatever its timestamps say, and
  the call is ended with what it has, its recording kept; a call whose wall-clock time since
  its first stream reaches it is ended too (``expiry``). The bound is on the timeline, not
  on the pace: a stream may send faster than real time (a replay) up to it.

Memory is bounded: audio is appended in the session's turn (its lock; a frame that finds it
free and unawaited skips taking it, the same order of events) and flushed (sealed, written
to the spool and fsynced; ``storage.spool``) inline when a track holds ``flush_bytes`` or
``flush_interval`` has passed; while a flush waits on a slow disk, the connection's handler
waits with it and stops reading its socket, so TCP pushes back on the PBX instead of memory
growing here. The object reaches the object store when the call ends.

Timed flushes fall on a grid of the call's own: every ``flush_interval`` from its first
stream, shifted by a phase derived from its call id (``flush_phase``), so that calls started
together (a burst, a node's restart) spread their seals and fsyncs over the interval instead
of flushing at once, and a stall of the loop does not gather them for good. A flush is due
at the first point of the grid after the previous one, so never more than ``flush_interval``
after the oldest frame it holds arrived.

Time is passed in (``now``); nothing here sleeps, and the one clock read is the monotonic
clock a session is given, twice per flush of a track (never per frame), for
``callvault_ingest_durable_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from crypto.errors import CallvaultError
from gateway.errors import IngestError, MalformedMessage, MaxDurationReached, StreamRefused
from gateway.ingest.events import Audio
from gateway.metrics import GatewayMetrics
from gateway.trackwriter import TrackWriter
from storage.catalog import AuditEntry, Call, Catalog, Recording
from storage.errors import Conflict, StorageError
from storage.media.codecs import codec as media_codec
from storage.media.tracks import AUDIO_KIND
from storage.vault import MediaVault, SealingUpload

log = logging.getLogger(__name__)

JITTER_MS = 10
"""A timestamped frame this close to its track's end continues the track exactly."""
MAX_JUMP_S = 600
"""The longest gap a stream timestamp may open in a track; a larger jump is refused (a
hostile or broken PBX could otherwise stretch a call to years of exported silence)."""

MAX_HELD_FLUSHES = 4
"""A stream whose flushes fail goes on until its call holds this many flushes' worth of
audio (``flush_bytes`` each: 16 s of a two-track G.711 call at the default), as RTP's does
(``gateway.ingest.rtp_server.MAX_BUFFERED_FLUSHES``)."""

EndReason = Literal[
    "stop",
    "hangup",
    "api",
    "reconnect_timeout",
    "start_timeout",
    "media_timeout",
    "max_duration",
    "ingest_unavailable",
    "shutdown",
    "tenant_deleted",
    "erased",
    "node_dead",
    "ended_elsewhere",
]
"""Why a call ended (``call.ended``'s ``reason``): the PBX's ``stop`` or hangup, the API's
end, a reconnect or first stream that did not come in time, RTP media that stopped, the
maximum duration, RTP ports that could not be bound, a shutdown, the tenant's deletion, an
erasure, or the death of the node that took it (``node_dead``: ended by another node with
the audio it had published); ``ended_elsewhere``: a node carrying the call's stream found
at a lease renewal that another node ended it (that node's reason is the call's)."""


def flush_phase(call_id: str) -> float:
    """Where in each flush interval a call's timed flushes fall, as a fraction in [0, 1):
    from its id, so the same on every node and spread evenly over calls."""
    return zlib.crc32(call_id.encode()) / 2**32


@dataclass(frozen=True, slots=True)
class SessionLimits:
    flush_interval: timedelta = timedelta(seconds=2)
    flush_bytes: int = 64 * 1024
    reconnect_grace: timedelta = timedelta(seconds=30)
    start_timeout: timedelta = timedelta(minutes=5)
    max_duration: timedelta = timedelta(hours=4)


class CallSession:
    """One accepted call while it is live."""

    def __init__(
        self,
        *,
        call: Call,
        recording: Recording,
        vault: MediaVault,
        limits: SessionLimits,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock``: monotonic seconds, read once per flush of a track (not per frame) for
        ``callvault_ingest_durable_seconds``."""
        self.call = call
        self.recording = recording
        self._vault = vault
        self._limits = limits
        self._metrics = metrics
        self._clock = clock
        self._codec = media_codec(call.codec)
        self._width = self._codec.bytes_per_sample
        self._rate = call.sample_rate
        self._max_samples = limits.max_duration * self._rate // timedelta(seconds=1)
        """``max_duration`` in samples: no frame may end past it on the timeline."""
        self._lock = asyncio.Lock()
        self.tracks: dict[str, TrackWriter] = {}
        self.paused = call.paused
        self.ended = False
        self.closing: EndReason | None = None
        """Set when the call started to end (or a frame reached ``max_duration``); cleared
        never. The ticker finishes a call with this reason if nothing else did (a finish
        that failed because the catalog was down, an RTP call past its limit)."""
        self.attached = False
        self.first_attached_at: datetime | None = None
        self.detached_at: datetime | None = None
        self.peer: str | None = None
        """AudioSocket: the address of the call's first connection, as this process learnt
        it from the catalog, which keeps it (``gateway.attachments``); a fast path only."""
        self.holder: str | None = None
        """The name of the stream attached now, the holder of the call's lease in the
        catalog; ``None`` while none is (or its lease was lost)."""
        self.lease_until: datetime | None = None
        """When the lease of ``holder`` ends unless renewed, as of its last successful
        claim or renewal; past it, its audio is refused (``lease_lapsed``)."""
        self.token_id: str | None = None
        """WebSocket: the id of the token that authenticated the stream attached now, which
        the node checks against revocations (``gateway.revalidation``)."""
        self.token_revoked = False
        """That token was found revoked or expired: the stream's audio is refused, and the
        call waits for a reconnect with an active token, as after a drop."""
        self._base = 0
        self._last_flush: datetime | None = None
        self._flush_at: datetime | None = None
        """When the next timed flush is due (``_flush_due``); ``None`` until the first attach."""
        self._phase = flush_phase(call.id)
        self._opened_at: datetime | None = None
        """When the last object this session opened is dated (``_open_upload``)."""

    @property
    def tenant(self) -> str:
        return self.call.tenant_id

    @property
    def call_id(self) -> str:
        return self.call.id

    @property
    def ai_features(self) -> list[str]:
        return list(self.call.decision.get("ai", []))

    def timeline_end(self) -> int:
        return max((track.position for track in self.tracks.values()), default=0)

    def buffered(self) -> int:
        return sum(track.buffered for track in self.tracks.values())

    def unpublished(self) -> bool:
        """Audio of this call is held here (buffered, or in an object not yet committed)."""
        return any(track.upload is not None or track.buffered for track in self.tracks.values())

    # --- connections ----------------------------------------------------------------------

    def refusal(self, *, peer: str | None = None) -> StreamRefused | None:
        """Why a stream may not start carrying this call now, as far as this process knows
        (the catalog's lease decides for the fleet: ``gateway.attachments``): it ended, or
        another stream carries it (one at a time: a second ``start`` is refused; after a
        drop, the same call id continues), or (``peer`` given, AudioSocket) it comes from
        another address than the call's first connection. Its refusals have AudioSocket's
        codes there (API.md)."""
        if self.ended or self.closing:
            return StreamRefused(f"Call {self.call_id!r} has ended.", code="call_ended")
        if self.attached:
            return StreamRefused(
                f"Call {self.call_id!r} is already streaming on another connection.",
                code="call_in_progress" if peer is None else "already_attached",
            )
        if peer is not None and self.peer is not None and peer != self.peer:
            return StreamRefused(
                f"Call {self.call_id!r} streamed from another address; a reconnect must come "
                "from it.",
                code="peer_mismatch",
            )
        return None

    def attach(
        self,
        now: datetime,
        *,
        peer: str | None = None,
        holder: str | None = None,
        lease_until: datetime | None = None,
        token_id: str | None = None,
        origin: datetime | None = None,
    ) -> None:
        """A stream starts carrying this call, unless ``refusal`` says why not.
        ``token_id``: the token that authenticated it (WebSocket transports). ``origin``:
        when the call first streamed, on whichever node (the catalog keeps it: a streamed
        call's first claim): its timeline counts from then on every node, so the parts
        recorded by each node of a call that moves between them line up; default: this
        process's first attach.

        ``holder`` and ``lease_until`` are given once the catalog granted the stream
        ``holder`` the call's lease until ``lease_until`` (``gateway.attachments``), and
        ``peer`` by a transport whose stream proves nothing but a secret id (AudioSocket):
        the catalog keeps which stream carries the call, and AudioSocket's first connection
        address, for every node and across restarts; this process keeps a copy."""
        refused = self.refusal(peer=peer)
        if refused is not None:
            raise refused
        if peer is not None:
            self.peer = peer
        self.holder = holder
        self.lease_until = lease_until
        self.token_id, self.token_revoked = token_id, False
        start = origin or self.first_attached_at or now
        self.first_attached_at = start
        elapsed = max(0, int((now - start).total_seconds() * self._rate))
        self._base = max(self.timeline_end(), elapsed)
        for track in self.tracks.values():
            track.skip(self._base)
        self.attached = True
        self.detached_at = None
        self._last_flush = self._last_flush or now
        if self._flush_at is None:
            self._flush_at = self._next_flush_point(now)

    def restore(self, track_ends: dict[str, int], now: datetime) -> None:
        """Take up a call this process does not hold (after a restart): its tracks end where
        its stored audio ends, its pause is the one the catalog kept, and it waits for a
        reconnect as if its stream had just dropped. Its timeline counts from when it first
        streamed (on any node), or, if it never did, from its announcement."""
        for name, end in track_ends.items():
            self.tracks[name] = self._new_track(end)
        self.first_attached_at = self.call.first_streamed_at or self.call.started_at
        self.detached_at = now

    def detach(self, now: datetime, *, holder: str | None = None) -> None:
        """The stream dropped without a stop: the call waits ``reconnect_grace``. With
        ``holder``, only if that stream is the one attached: one that lost its lease (or
        that a reconnect took over) detaches nobody."""
        if self.attached and (holder is None or holder == self.holder):
            self.attached = False
            self.holder = None
            self.lease_until = None
            self.token_id, self.token_revoked = None, False
            self.detached_at = now

    def lease_lapsed(self, now: datetime) -> bool:
        """The attached stream's lease ran out at ``now`` (its renewals failed): another
        stream may carry the call now, so this one may not."""
        return self.lease_until is not None and now >= self.lease_until

    def seen_attached(self, when: datetime) -> None:
        """A connection elsewhere (another node) carried the call until ``when``: the
        reconnect grace counts from then, if that is later than what this process saw."""
        if self.detached_at is None or when > self.detached_at:
            self.detached_at = when

    def expiry(self, now: datetime) -> EndReason | None:
        """Why the call should end now without its PBX saying so, if it should: a frame
        reached ``max_duration``, or the wall-clock time since its first stream did, or its
        stream dropped and did not come back in time, or it never started streaming."""
        if self.ended:
            return None
        if self.closing:
            return self.closing  # a finish that failed, or a frame past the limit
        started = self.first_attached_at
        if started is not None and now - started >= self._limits.max_duration:
            return "max_duration"
        if self.attached:
            return None
        if self.detached_at is not None:
            if now - self.detached_at >= self._limits.reconnect_grace:
                return "reconnect_timeout"
        elif now - self.call.started_at >= self._limits.start_timeout:
            return "start_timeout"
        return None

    # --- audio ----------------------------------------------------------------------------

    async def receive(self, audio: Audio, now: datetime) -> None:
        """Place one frame on its track's timeline (or discard it while paused), and flush
        when the track holds enough or the interval has passed; a connection's handler
        waits for that flush (so a slow disk slows its reading, not memory).

        A track whose object cannot be opened (the catalog is down when its first flush
        registers it) keeps its audio buffered, and the stream goes on: the next frame
        tries again. Only once the call holds ``MAX_HELD_FLUSHES`` flushes' worth is the
        error raised, closing the stream, so that memory stays bounded. A flush that fails
        after it took the audio (the spool's write or fsync: disk full, EIO) has lost that
        audio, so it is raised at once: the stream must not go on losing every flush."""
        if not self.placing_now:
            # Held (a flush, publish or finish runs) or promised to a waiter: in turn.
            async with self._lock:
                if self.place(audio, now):
                    await self._flush(now, hold=MAX_HELD_FLUSHES * self._limits.flush_bytes)
            return
        if self.place(audio, now):
            await self.flush_placed(now)

    @property
    def placing_now(self) -> bool:
        """Whether ``place`` may run now instead of in turn under the lock: it is free and
        nobody waits for it, so taking it would not yield, and placing first and taking it
        only for a flush (``flush_placed``) is the same order of events, without the cost
        of taking it for every frame."""
        lock = self._lock
        return not (lock.locked() or lock._waiters)

    async def flush_placed(self, now: datetime) -> None:
        """The flush that ``place`` found due, for frames placed while ``placing_now``
        (before anything awaited since)."""
        async with self._lock:
            await self._flush(now, hold=MAX_HELD_FLUSHES * self._limits.flush_bytes)

    def place(self, audio: Audio, now: datetime) -> bool:
        """Place one frame without waiting: ``True`` when a flush is due. For transports
        that cannot wait (RTP's datagrams arrive whether or not a flush is running); they
        run ``flush`` themselves and bound what they let buffer."""
        payload = audio.payload
        width = self._width
        if width and not len(payload) % width:
            samples = len(payload) // width  # inline: this runs for every frame
        else:
            try:
                samples = self._codec.frames(payload)
            except StorageError as e:
                raise MalformedMessage(
                    f"An audio frame: {e.message}.", code="bad_frame_length"
                ) from None
        if self.ended or self.closing:
            raise self.ended_refusal()
        track = self.tracks.get(audio.track)
        if track is None:
            track = self._new_track(self._base)
            self.tracks[audio.track] = track
        if audio.offset is None and audio.timestamp_ms is None:
            offset = track.position  # inline: fork and AudioSocket frames continue the track
        else:
            offset = self._offset(track, audio)
        if offset + samples > self._max_samples:
            # Paused or not: the timeline itself is bounded. The call ends here; the
            # ticker finishes it if the transport does not first.
            self.closing = "max_duration"
            raise self._past_limit(audio, offset, samples)
        if self.paused:
            track.skip(offset + samples)
            self._metrics.audio_discarded.inc(len(payload))
            return False
        if payload:
            track.append(offset, payload, samples)
        return track.buffered >= self._limits.flush_bytes or self._flush_due(now)

    def place_run(
        self,
        track: str,
        payloads: Sequence[bytes],
        offsets: Sequence[int],
        now: datetime,
        *,
        start: int = 0,
        bound: int | None = None,
        stop_when_due: bool = True,
    ) -> tuple[int, bool]:
        """``place`` for RTP's runs: ``payloads[start:]`` at their exact ``offsets``, placed
        as ``place`` would one by one while each is plain; ``(end, due)``: placed up to
        ``end``, the last making a flush due (``due``, with ``stop_when_due``). It stops
        before one that needs ``place``'s decision (not attached, ended, closing, paused, a
        new track, a bad payload, past ``max_duration``, or ``bound`` bytes buffered)."""
        writer = self.tracks.get(track)
        if self.ended or self.closing or self.paused or not self.attached or writer is None:
            return start, False
        width, frames = self._width, self._codec.frames
        time_due = self._flush_due(now)
        others = self.buffered() - writer.buffered if bound is not None else 0
        for end in range(start, len(payloads)):
            payload = payloads[end]
            if width and not len(payload) % width:
                samples = len(payload) // width
            else:
                try:
                    samples = frames(payload)
                except StorageError:
                    return end, False
            offset = max(offsets[end], writer.position)
            if offset + samples > self._max_samples or (
                bound is not None and others + writer.buffered >= bound
            ):
                return end, False
            if payload:
                writer.append(offset, payload, samples)
            if stop_when_due and (time_due or writer.buffered >= self._limits.flush_bytes):
                return end + 1, True
        return len(payloads), False

    def ended_refusal(self) -> IngestError:
        """What a frame of this ended (or ending) call meets: ``max_duration`` when that is
        why it ended, so that its PBX learns why, ``call_ended`` otherwise."""
        if self.closing == "max_duration":
            return MaxDurationReached(
                f"Call {self.call_id!r} reached its maximum duration of "
                f"{self._limits.max_duration.total_seconds():g} s "
                "(CALLVAULT_CALLS__MAX_DURATION) and has ended; its recording is kept."
            )
        return StreamRefused(f"Call {self.call_id!r} has ended.", code="call_ended")

    def _past_limit(self, audio: Audio, offset: int, samples: int) -> MaxDurationReached:
        span = f"{offset / self._rate:.3f}-{(offset + samples) / self._rate:.3f} s"
        if audio.timestamp_ms is not None:
            frame = f"media.timestamp {audio.timestamp_ms} places the {audio.track} frame at {span}"
        else:
            frame = f"The {audio.track} frame would lie at {span}"
        return MaxDurationReached(
            f"{frame}, past the call's maximum duration of "
            f"{self._limits.max_duration.total_seconds():g} s (CALLVAULT_CALLS__MAX_DURATION): "
            "it is refused, and the call has ended with what it has; its recording is kept."
        )

    def _offset(self, track: TrackWriter, audio: Audio) -> int:
        if audio.offset is not None:
            # Exact (RTP), and bounded by the call's clock where it was computed: no jitter
            # to absorb, only never before what the track holds.
            return max(audio.offset, track.position)
        if audio.timestamp_ms is None:
            return track.position
        stamped = self._base + audio.timestamp_ms * self._rate // 1000
        jump = stamped - track.position
        if jump > MAX_JUMP_S * self._rate:
            raise MalformedMessage(
                f"media.timestamp jumps {jump // self._rate} s past the {audio.track} track's "
                f"end (at most {MAX_JUMP_S} s).",
                code="bad_timestamp",
            )
        if jump > JITTER_MS * self._rate // 1000:
            return stamped
        return track.position

    async def _open_upload(self, track: str, now: datetime) -> SealingUpload:
        # A recording's objects are read in the order they were created: each object this
        # session opens is dated after the ones it opened before, even on a clock that did
        # not move (a stint published at its drop, then the next one, in one instant).
        if self._opened_at is not None and now <= self._opened_at:
            now = self._opened_at + timedelta(microseconds=1)
        self._opened_at = now
        return await self._vault.create_object(
            tenant=self.tenant,
            kind=AUDIO_KIND,
            data_class="recordings",
            now=now,
            recording_id=self.recording.id,
            track=track,
            spooled=True,
        )

    def _new_track(self, position: int) -> TrackWriter:
        return TrackWriter(
            packets=self._codec.packetized,
            position=position,
            clock=self._clock,
            durable=self._metrics.ingest_durable,
        )

    def _flush_due(self, now: datetime) -> bool:
        return self._flush_at is None or now >= self._flush_at

    def _next_flush_point(self, now: datetime) -> datetime:
        """The first point of this call's flush grid after ``now``: every ``flush_interval``
        from its first stream, shifted by its phase; at most ``flush_interval`` away."""
        interval = self._limits.flush_interval
        if interval <= timedelta(0):
            return now
        anchor = (self.first_attached_at or now) + interval * self._phase
        return anchor + ((now - anchor) // interval + 1) * interval

    async def _flush(self, now: datetime, *, hold: int = 0) -> None:
        """Flush every track; a track whose flush fails is abandoned (what it made durable
        stays in the spool) and continues in a new object, the others are flushed anyway.
        A track whose object could not be opened still holds its audio: that is raised only
        once the call buffers ``hold`` bytes or more (0: always)."""
        self._last_flush = now
        self._flush_at = self._next_flush_point(now)
        failed: CallvaultError | None = None
        held: CallvaultError | None = None
        for name, track in self.tracks.items():
            try:
                await self._open_if_needed(name, track, now)
            except CallvaultError as e:
                held = held or e  # nothing taken: the audio waits for the next flush
                continue
            try:
                await track.flush(now)
            except CallvaultError as e:
                failed = failed or e  # taken, and lost but for what the spool made durable
        if failed is not None or held is not None:
            self._metrics.flush_failures.inc()
        if failed is not None:
            raise failed
        if held is not None and self.buffered() >= hold:
            raise held

    async def _open_if_needed(self, name: str, track: TrackWriter, now: datetime) -> None:
        if track.upload is None and track.buffered:
            track.upload = await self._open_upload(name, now)

    async def flush_if_due(self, now: datetime, *, force: bool = False) -> None:
        """The ticker's flush, for streams that went quiet between frames; with ``force``,
        the flush ``place`` asked for."""
        if not force and not self._flush_due(now):
            return  # the ticker asks every live call four times a second: no lock for a no
        async with self._lock:
            due = force or self._flush_due(now)
            if not self.ended and not self.closing and self.buffered() and due:
                await self._flush(now)

    async def publish(self, now: datetime) -> bool:
        """Publish what this process recorded of the call without ending it (another
        connection, on another node, carries it now): each track's object is committed, and
        audio that arrives later here would go to new ones. An object opened here for audio
        still buffered is dated from the last flush, when that audio began to arrive: a
        recording's objects are read in the order they were created, and this audio comes
        before anything the other node recorded since. ``False`` if a track failed (what
        it still buffers is tried again by the next publish)."""
        async with self._lock:
            return await self._commit_tracks(
                self._last_flush or now, now, logging.WARNING, "published"
            )

    async def _commit_tracks(self, opened: datetime, now: datetime, level: int, done: str) -> bool:
        """Seal and commit every track (an object opened now for buffered audio is dated
        ``opened``); whether every one was. A track that fails is left in the spool (its
        object stays 'writing'): the next recovery pass publishes it, and the export answers
        503 until then; a track whose object could not be opened keeps its audio buffered.
        It is logged at ``level`` as not ``done``."""
        whole = True
        for name, track in self.tracks.items():
            try:
                await self._open_if_needed(name, track, opened)
                await track.commit(now)
            except CallvaultError as e:
                self._metrics.flush_failures.inc()
                log.log(
                    level,
                    "call %s track %s could not be %s: %s",
                    self.call_id,
                    name,
                    done,
                    e.code,
                    extra={**self._log_fields(), "track": name, "code": e.code},
                )
                whole = False
        return whole

    # --- control --------------------------------------------------------------------------

    async def pause(self) -> None:
        async with self._lock:
            self._require_live()
            self.paused = True

    async def resume(self) -> None:
        async with self._lock:
            self._require_live()
            self.paused = False

    def _require_live(self) -> None:
        if self.ended:
            raise Conflict(f"Call {self.call_id!r} has ended.")

    async def finish(
        self,
        catalog: Catalog,
        now: datetime,
        reason: EndReason,
        *,
        while_node_dead: str | None = None,
        unless_carried_elsewhere: str | None = None,
    ) -> Recording:
        """Seal and commit every track, then finalize the recording (and queue its AI job
        when AI was instructed) in one catalog transaction. Idempotent. ``while_node_dead``:
        another node ends a call of that dead node (``CallRegistry.end_for_dead_node``); if
        the node came back meanwhile, nothing is finalized and the session stays live.
        ``unless_carried_elsewhere``: this process's stream holder prefix; if a stream of
        another process carries the call when the catalog finalizes it, nothing is
        finalized (the tracks are published all the same) and the session is not ended."""
        async with self._lock:
            if self.ended:
                return self.recording
            closing, self.closing = self.closing, self.closing or reason
            self.attached = False
            self.holder = None
            self.lease_until = None
            await self._commit_tracks(now, now, logging.ERROR, "committed")
            job_id = "job_" + secrets.token_hex(12) if self.ai_features else None
            samples = self.timeline_end()
            ended = AuditEntry(
                actor="gateway",
                action="call.ended",
                object=self.recording.id,
                detail={
                    "call_id": self.call_id,
                    "reason": self.closing,
                    "samples": samples,
                    "tracks": sorted(self.tracks),
                    "job": job_id,
                },
            )
            # The recording's end, its AI job and the call.ended event commit together.
            self.recording = await catalog.recordings.finish(
                self.tenant,
                self.recording.id,
                samples=samples,
                now=now,
                job_id=job_id,
                audit=ended,
                while_node_dead=while_node_dead,
                unless_carried_elsewhere=unless_carried_elsewhere,
            )
            if self.recording.status == "recording":  # its node is back, or it moved
                # Not ending: a round that still holds the session must not end it for this.
                self.closing = closing
                return self.recording
            self.ended = True
            if job_id is not None and self.recording.status == "processing":
                self._metrics.jobs_queued.inc()
            log.info(
                "call %s ended (%s): %d samples on %d track(s)",
                self.call_id,
                self.closing,
                samples,
                len(self.tracks),
                extra={**self._log_fields(), "reason": self.closing, "samples": samples},
            )
            return self.recording

    async def discard(self, now: datetime, reason: EndReason) -> None:
        """End the call keeping nothing more of it, when its tenant was deleted through
        another node (whose deletion destroyed the tenant's keys and swept its rows, this
        call's too): its buffered audio is dropped and its uploads abandoned (the spool's
        recovery pass discards what they wrote, its key being gone). Idempotent."""
        async with self._lock:
            if self.ended:
                return
            self.closing = self.closing or reason
            self.attached = False
            self.holder = None
            self.lease_until = None
            for track in self.tracks.values():
                await track.discard(now)
            self.ended = True
            log.info(
                "call %s ended (%s): its tenant was deleted; nothing more of it is kept",
                self.call_id,
                self.closing,
                extra={**self._log_fields(), "reason": self.closing},
            )

    def _log_fields(self) -> dict[str, str]:
        return {"tenant": self.tenant, "call_id": self.call_id, "recording_id": self.recording.id}
