"""The RTP/SRTP ingest's sockets: a UDP port pair per track, bound while its call lives.

An announced ``rtp`` call gets, for each track (inbound, outbound), an even port for RTP and
the odd one after it for RTCP (whose packets are counted and dropped: the gateway needs
none of them), taken from ``rtp.port_min..port_max``, and for SRTP a fresh SDES key per
track. The ports go back to the pool (least recently used first, so a late packet of an
ended call is unlikely to meet a new call on the same port) when the call ends: on
``POST .../end``, after ``rtp.timeout`` without a packet (``media_timeout``; for a call that
never sent one, ``rtp.timeout`` after its announcement: ``start_timeout``, so an idle
announcement cannot hold ports for the longer ``ingest.start_timeout``), when it reaches
``calls.max_duration``, at shutdown or when the tenant is deleted.

Each RTP socket is drained in one read (up to ``MAX_BATCH`` datagrams, until it would
block; ``rtp_sockets`` says how and when) and the batch goes, with one reading of the clock,
to the track's sans-I/O ``RtpTrackReceiver`` (``receive_batch``); the audio it releases
comes out as runs of payloads, each placed on the call's session at once
(``CallSession.place_run``: no event, task or counter per packet), exactly where placing
them one by one (``CallSession.place``) would have put them; a flush that falls due runs as
one task per call. UDP cannot push back on a slow disk, so a call whose buffered audio
reaches ``MAX_BUFFERED_FLUSHES`` flushes' worth drops further audio, counted
(``overload``), instead of growing without bound. Audio that would lie past the call's
maximum duration is dropped, counted (``max_duration``), and the registry's ticker ends the
call (the session is closing). Nothing a peer sends raises out of a socket's reader; a bug
in the batch path costs the rest of its batch (up to ``MAX_BATCH`` datagrams, logged, not
counted), never the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from crypto.errors import CallvaultError
from gateway.calls import CallRegistry, CallTransport
from gateway.clock import Clock
from gateway.errors import IngestUnavailable, MaxDurationReached
from gateway.ingest.events import Audio, Dtmf, Event, Track
from gateway.ingest.rtp import (
    DELIVERED,
    DROP_REASONS,
    AudioRun,
    PayloadTypes,
    RtpTrackReceiver,
    SrtpKey,
    Timeline,
)
from gateway.ingest.rtp_sockets import Datagram, Poller, Port, Reader
from gateway.metrics import GatewayMetrics
from gateway.session import CallSession, EndReason
from gateway.settings import RtpSettings
from storage.media.codecs import codec as media_codec

log = logging.getLogger(__name__)

TRACKS: tuple[Track, ...] = ("inbound", "outbound")
MAX_BUFFERED_FLUSHES = 4
"""A call may hold this many flushes' worth of audio while its flush is slow or failing."""
FLUSH_RETRY_S = 1.0
"""After a failed flush, the next one the datagrams ask for is started no sooner than this."""
OUTCOMES = (*DROP_REASONS, *DELIVERED, "closed", "overload", "max_duration")
"""Every label of ``callvault_rtp_datagrams``: the receiver's, and the glue's own drops
(``closed``: the call is ending; ``overload``: its flush cannot keep up; ``max_duration``:
the audio would lie past the call's maximum duration, which ends the call)."""


@dataclass(frozen=True, slots=True)
class RtpOffer:
    """What the announcement hands the PBX for an RTP call."""

    host: str
    ports: dict[Track, int]
    keys: dict[Track, SrtpKey] | None = field(repr=False)

    def document(self) -> dict[str, object]:
        """The announcement's ``ingest.rtp`` object."""
        return {
            "host": self.host,
            **{str(track): port for track, port in self.ports.items()},
            "rtcp": {track: port + 1 for track, port in self.ports.items()},
            "srtp": self.keys is not None,
            "crypto": None
            if self.keys is None
            else {track: key.sdes() for track, key in self.keys.items()},
        }


class PortPool:
    """The even ports of ``port_min..port_max`` whose odd neighbour is in range too; the
    least recently released is handed out first."""

    def __init__(self, port_min: int, port_max: int) -> None:
        first = port_min + port_min % 2
        self._free: deque[int] = deque(range(first, port_max, 2))

    def __len__(self) -> int:
        return len(self._free)

    def take(self) -> int | None:
        return self._free.popleft() if self._free else None

    def give_back(self, port: int) -> None:
        self._free.append(port)


class _RtpCall:
    """The sockets, receivers and flush task of one live RTP call."""

    def __init__(
        self,
        session: CallSession,
        *,
        clock: Clock,
        metrics: GatewayMetrics,
        outcomes: Mapping[str, Callable[..., object]],
        max_buffered: int,
    ) -> None:
        self.session = session
        self.opened_at = clock.now().timestamp()
        """When its ports were bound: a call that never sends is ended ``rtp.timeout``
        after it."""
        self.ports: dict[Track, int] = {}
        self.sockets: list[Port | Reader] = []
        self.receivers: dict[Track, RtpTrackReceiver] = {}
        self._clock = clock
        self._outcomes = outcomes
        self._dtmf = metrics.dtmf_events.labels("rtp")
        self.delivered = 0
        """Audio datagrams the session took; published to the metrics when they are read
        (a plain int on the datagram path: a Prometheus counter takes a lock per inc)."""
        self.published = 0
        self._max_buffered = max_buffered
        self._flush: asyncio.Task[None] | None = None
        self._retry_at: float | None = None
        """After a failed flush: the loop time before which no other is started."""
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    def count(self, outcome: str) -> None:
        self._outcomes[outcome]()

    # --- datagrams in ---------------------------------------------------------------------

    def count_many(self, outcome: str, datagrams: int) -> None:
        self._outcomes[outcome](datagrams)

    def receive_batch(self, track: Track, datagrams: Sequence[Datagram]) -> None:
        """The datagrams one read of ``track``'s socket found: one clock reading, one call
        of the receiver, one placement per run of audio. (A bug costs the batch, never the
        port.)"""
        if self.closed:
            self.count_many("closed", len(datagrams))
            return
        now = self._clock.now()
        at = now.timestamp()
        receiver = self.receivers[track]  # made before the port was bound
        try:
            items = receiver.receive_batch(datagrams, at)
            for item in items:
                if isinstance(item, AudioRun):
                    self.place_run(item, now)
                else:
                    self.place([item], now)
            if receiver.deadline is not None and self._timer is None:
                self._arm_timer(receiver.deadline - at)
        except Exception:
            log.exception(
                "call %s: RTP datagrams could not be handled",
                self.session.call_id,
                extra={"tenant": self.session.tenant, "call_id": self.session.call_id},
            )

    def place_run(self, run: AudioRun, now: datetime) -> None:
        """Place a run of audio as ``place`` would each of its packets: the plain ones in
        stretches (``CallSession.place_run``), each that needs a decision through ``place``."""
        session = self.session
        payloads, offsets = run.payloads, run.offsets
        count = len(payloads)
        index = 0
        while index < count:
            ending = self._ending()
            if ending is not None:
                self.count_many(ending, count - index)
                return
            held_up = self._held_up()
            if held_up and session.buffered() >= self._max_buffered:
                self.count_many("overload", count - index)  # buffers cannot shrink here
                return
            may_flush = self._may_flush()
            end, due = session.place_run(
                run.track,
                payloads,
                offsets,
                now,
                start=index,
                bound=self._max_buffered if held_up else None,
                stop_when_due=may_flush,
            )
            self.delivered += end - index
            index = end
            if due:
                self._flush = asyncio.get_running_loop().create_task(self._flush_now())
            elif index < count:
                # One that needs a decision (a new track, not attached, past the limit...).
                self.place([Audio(run.track, payloads[index], None, None, offsets[index])], now)
                index += 1

    def receive(self, track: Track, data: bytes, addr: tuple[str, int]) -> None:
        """One datagram (the per-packet path: ``receive_batch`` is what the sockets use;
        this one is the reference it must match)."""
        if self.closed:
            self.count("closed")
            return
        now = self._clock.now()
        receiver = self.receivers[track]  # made before the port was bound
        try:
            events = receiver.receive_datagram(data, addr, now.timestamp())
            if events:
                self.place(events, now)
            if receiver.deadline is not None and self._timer is None:
                self._arm_timer(receiver.deadline - now.timestamp())
        except Exception:  # a bug must cost one datagram, never the port
            log.exception(
                "call %s: an RTP datagram could not be handled",
                self.session.call_id,
                extra={"tenant": self.session.tenant, "call_id": self.session.call_id},
            )

    def place(self, events: list[Event], now: datetime) -> None:
        session = self.session
        for event in events:
            if isinstance(event, Dtmf):
                self._dtmf.inc()  # never the digit (PCI DSS): counted, not stored
                continue
            assert isinstance(event, Audio)  # noqa: S101 - the receiver yields nothing else
            ending = self._ending()
            if ending is not None:
                # Every packet past the limit is counted as such, not only the first.
                self.count(ending)
                continue
            if self._held_up() and session.buffered() >= self._max_buffered:
                self.count("overload")
                continue
            try:
                if not session.attached:
                    session.attach(now)
                due = session.place(event, now)
            except MaxDurationReached:
                # Nothing past the limit is stored; the session is closing now, and the
                # registry's ticker ends the call (a datagram cannot wait for that).
                self.count("max_duration")
                continue
            except CallvaultError:
                self.count("bad_payload")  # ended or closing was checked just above
                continue
            self.delivered += 1
            if due and self._may_flush():
                self._flush = asyncio.get_running_loop().create_task(self._flush_now())

    def _ending(self) -> str | None:
        """The outcome of audio that comes while the call ends (``max_duration`` when that
        is why), or ``None`` while it records."""
        session = self.session
        if not (session.ended or session.closing):
            return None
        return "max_duration" if session.closing == "max_duration" else "closed"

    def _held_up(self) -> bool:
        """A flush is in flight, or the last one failed: only then may the buffers grow past
        one flush's worth (up to ``max_buffered``)."""
        return self._flush is not None or self._retry_at is not None

    def _may_flush(self) -> bool:
        """A flush may start now: none in flight, and none failed less than
        ``FLUSH_RETRY_S`` ago."""
        return self._flush is None and (
            self._retry_at is None or asyncio.get_running_loop().time() >= self._retry_at
        )

    async def _flush_now(self) -> None:
        try:
            await self.session.flush_if_due(self._clock.now(), force=True)
            self._retry_at = None
        except Exception as e:  # logged here: nobody awaits this task
            # Not again for a while: a store that is down fails every attempt at once.
            self._retry_at = asyncio.get_running_loop().time() + FLUSH_RETRY_S
            code = e.code if isinstance(e, CallvaultError) else type(e).__name__
            log.warning(
                "call %s: an RTP flush failed: %s",
                self.session.call_id,
                code,
                exc_info=not isinstance(e, CallvaultError),
                extra={"tenant": self.session.tenant, "call_id": self.session.call_id},
            )
        finally:
            self._flush = None

    # --- reorder deadlines ----------------------------------------------------------------

    def _arm_timer(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(delay, 0.0), self._on_timer)

    def _on_timer(self) -> None:
        """A gap's reorder delay is over: what the sockets hold is read first (the poller
        may not have read it yet: ``rtp.read_interval``), so that a gap is given up only
        when no datagram that had arrived by then fills it."""
        if self.closed:
            self._timer = None
            return
        try:
            self.read_sockets()  # with the timer still set: the batch path arms no other
        finally:
            self._timer = None
        now = self._clock.now()
        deadlines = []
        for receiver in self.receivers.values():
            events = receiver.poll(now.timestamp())
            if events:
                self.place(events, now)
            if receiver.deadline is not None:
                deadlines.append(receiver.deadline)
        if deadlines:
            self._arm_timer(min(deadlines) - now.timestamp())

    def read_sockets(self) -> None:
        """Read the call's RTP sockets now, not when the poller next would."""
        for sock in self.sockets:
            if isinstance(sock, Reader):
                try:
                    sock.read()
                except Exception:  # a bug must cost this read, never the call's timer or end
                    log.exception(
                        "call %s: RTP datagrams could not be read",
                        self.session.call_id,
                        extra={"tenant": self.session.tenant, "call_id": self.session.call_id},
                    )

    def drain(self, now: datetime) -> None:
        """Hand the session what its sockets and reorder buffers still hold (the call is
        ending: datagrams that arrived before the end are the call's, whether or not the
        poller has read them yet)."""
        self.read_sockets()
        for receiver in self.receivers.values():
            events = receiver.drain(now.timestamp())
            if events:
                self.place(events, now)

    def last_packet_at(self) -> float | None:
        times = [r.last_packet_at for r in self.receivers.values() if r.last_packet_at]
        return max(times, default=None)

    async def settle(self) -> None:
        """Wait for the flush in flight, if one is."""
        if self._flush is not None:
            with contextlib.suppress(asyncio.CancelledError, CallvaultError):
                await self._flush

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for sock in self.sockets:
            sock.close()


class RtpIngest(CallTransport):
    """Hands out port pairs and keys to RTP calls and ends calls whose media stopped."""

    def __init__(
        self,
        settings: RtpSettings,
        *,
        registry: CallRegistry,
        metrics: GatewayMetrics,
        clock: Clock,
        flush_bytes: int,
        public_host: str | None = None,
    ) -> None:
        """``public_host``: ``CALLVAULT_NODE__PUBLIC_HOST``, the host offers name when
        ``CALLVAULT_RTP__ADVERTISE_HOST`` does not."""
        self._settings = settings
        self._host = settings.advertise_host or public_host or settings.host
        self._registry = registry
        self._metrics = metrics
        self._clock = clock
        self._pool = PortPool(settings.port_min, settings.port_max)
        self._calls: dict[tuple[str, str], _RtpCall] = {}
        self._max_buffered = MAX_BUFFERED_FLUSHES * flush_bytes
        # Resolved once: a labelled child per outcome, so a datagram costs one inc().
        self._outcomes = {
            outcome: metrics.rtp_datagrams.labels(outcome).inc for outcome in OUTCOMES
        }
        self._delivered = metrics.rtp_datagrams.labels("audio")
        self._frames = metrics.frames_in.labels("rtp")
        self._reads: Poller | None = None
        """The RTP sockets' poller (made with the first call; none without an interval)."""
        registry.add_transport(self)

    def _poller(self) -> Poller | None:
        interval = self._settings.read_interval.total_seconds()
        if self._reads is None and interval > 0 and Poller.available():
            self._reads = Poller(interval)
        return self._reads

    def publish_counts(self) -> None:
        """Add the audio datagrams taken since the last call to the metrics (``/metrics``
        calls it before it answers)."""
        for call in self._calls.values():
            self._publish(call)

    def _publish(self, call: _RtpCall) -> None:
        fresh = call.delivered - call.published
        if fresh:
            call.published = call.delivered
            self._delivered.inc(fresh)
            self._frames.inc(fresh)

    @property
    def free_ports(self) -> int:
        """Port pairs left in the pool."""
        return len(self._pool)

    async def open_call(
        self, session: CallSession, *, srtp: bool, payload_types: PayloadTypes
    ) -> RtpOffer:
        """Bind a port pair per track and make the keys; ``IngestUnavailable``
        (``rtp_ports_exhausted``, 503) when no pair is free."""
        call = _RtpCall(
            session,
            clock=self._clock,
            metrics=self._metrics,
            outcomes=self._outcomes,
            max_buffered=self._max_buffered,
        )
        timeline = Timeline(session.call.sample_rate)
        keys = {track: SrtpKey.generate() for track in TRACKS} if srtp else None
        try:
            for track in TRACKS:
                # The receiver first: a datagram may arrive as soon as the port is bound.
                call.receivers[track] = RtpTrackReceiver(
                    track=track,
                    codec=media_codec(session.call.codec),
                    payload_types=payload_types,
                    key=keys[track] if keys else None,
                    timeline=timeline,
                    count=call.count,
                )
                await self._bind_pair(call, track)
        except BaseException:
            self._release(call)
            raise
        self._calls[(session.tenant, session.call_id)] = call
        self._metrics.rtp_ports.set(self._ports_in_use())
        return RtpOffer(host=self._host, ports=dict(call.ports), keys=keys)

    async def _bind_pair(self, call: _RtpCall, track: Track) -> None:
        """Bind the first pair from the pool that binds (another program may hold one) as
        ``track``'s. Each socket joins the call as soon as it is bound, so that whatever
        interrupts this (a cancelled request) leaves nothing the call's release misses."""
        loop = asyncio.get_running_loop()
        for _ in range(len(self._pool)):
            port = self._pool.take()
            if port is None:
                break
            call.ports[track] = port
            bound: list[Port | Reader] = []
            try:
                reader = Reader(
                    lambda batch: call.receive_batch(track, batch),
                    self._poller(),
                    anchored=lambda: call.receivers[track].anchored,
                )
                call.sockets.append(reader)
                bound.append(reader)
                await reader.bind(self._settings.host, port)
                rtcp = Port(lambda data, addr: call.count("rtcp"))
                call.sockets.append(rtcp)
                bound.append(rtcp)
                await loop.create_datagram_endpoint(
                    lambda rtcp=rtcp: rtcp,  # type: ignore[misc]
                    local_addr=(self._settings.host, port + 1),
                )
            except OSError as e:
                for sock in bound:
                    sock.close()
                    call.sockets.remove(sock)
                del call.ports[track]
                self._pool.give_back(port)
                if e.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue  # another program holds this one: try the next pair
                # Out of file descriptors, or the host address is wrong: no port would do.
                raise IngestUnavailable(
                    f"RTP ports cannot be opened: {e.strerror or type(e).__name__}.",
                    code="rtp_unavailable",
                ) from None
            return
        raise IngestUnavailable(
            "No RTP port pair is free; retry later, or the operator must widen "
            "rtp.port_min..port_max.",
            code="rtp_ports_exhausted",
        )

    def closing(self, session: CallSession, now: datetime) -> None:
        call = self._calls.get((session.tenant, session.call_id))
        if call is not None and not call.closed:
            call.drain(now)

    def ended(self, session: CallSession) -> None:
        call = self._calls.pop((session.tenant, session.call_id), None)
        if call is not None:
            self._release(call)

    def _release(self, call: _RtpCall) -> None:
        self._publish(call)
        call.close()
        for port in call.ports.values():
            self._pool.give_back(port)
        call.ports.clear()
        self._metrics.rtp_ports.set(self._ports_in_use())

    def _ports_in_use(self) -> int:
        return 4 * len(self._calls)

    async def tick(self, now: datetime) -> None:
        """End the calls whose media stopped ``rtp.timeout`` ago (``media_timeout``), and
        those that never sent a packet in ``rtp.timeout`` since their ports were bound
        (``start_timeout``: their stream never started), so that their ports go back."""
        limit = self._settings.timeout.total_seconds()
        for call in list(self._calls.values()):
            last = call.last_packet_at()
            reason: EndReason = "start_timeout" if last is None else "media_timeout"
            if now.timestamp() - (call.opened_at if last is None else last) < limit:
                continue
            session = call.session
            try:
                await self._registry.end(session.tenant, session.call_id, now=now, reason=reason)
            except CallvaultError as e:
                log.warning(
                    "call %s: ending it after its media stopped failed: %s",
                    session.call_id,
                    e.code,
                    extra={"tenant": session.tenant, "call_id": session.call_id},
                )

    async def close(self) -> None:
        """Release every port (the registry has finalized the calls by now)."""
        for call in list(self._calls.values()):
            self._release(call)
            await call.settle()
        self._calls.clear()
        if self._reads is not None:
            self._reads.close()
            self._reads = None
