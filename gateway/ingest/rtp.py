"""RTP and SRTP for forked call media, without sockets: one receiver per track's UDP port.

Why this module exists: a PBX that forks a call as RTP sends each direction (track) as a
stream of UDP datagrams to a port the announcement handed out, usually SRTP-protected
with the SDES key that came with it. Datagrams arrive lost, duplicated, reordered, replayed,
from strangers, or garbled; the receiver turns them into the same ``Audio`` and ``Dtmf``
events the other transports produce, each audio payload stamped with its exact place on
the call's timeline, and counts everything it refuses. Only ``gateway.ingest.rtp_server``
touches sockets; this module is fed ``(datagram, source address, now)`` (STYLE.md §1).

What a datagram goes through, cheapest check first:

1. version 2 and a full header, else ``malformed``; RTCP multiplexed onto the port is
   ``rtcp`` (not stored);
2. the source: the first packet that authenticates latches its address (symmetric RTP);
   others are ``unexpected_source``. With SRTP, a new address may take over once the
   latched one has been silent for ``RELATCH_AFTER_S`` (a PBX failing over), because only
   the key holder can produce a packet that authenticates; plain RTP never re-latches;
3. SRTP (libsrtp via pylibsrtp): ``malformed`` if longer than ``MAX_SRTP_PACKET``,
   ``auth_failed``, or ``replay`` for a packet libsrtp's replay window has seen or has
   left behind;
4. the payload type: the call's codec (0 PCMU, 8 PCMA, a dynamic one for Opus), comfort
   noise (13, ignored: the gap in timestamps is the silence), RFC 4733 telephone events
   (DTMF, never audio); anything else ``unexpected_payload_type``; an Opus payload that is
   not an Opus packet is ``bad_payload``;
5. the SSRC: a new one must send ``MIN_SEQUENTIAL`` packets in sequence before it replaces
   the current source (RFC 3550 §A.1 probation), and a replaced one is ``stale_source``
   while the current one keeps sending, so two senders on one port cannot make the track
   flip between them;
6. the sequence number (extended past 65535): a short reorder buffer puts packets back in
   order; a packet already delivered is ``duplicate``, one whose gap was given up is
   ``late``; a gap is given up when more than ``reorder_depth`` packets wait behind it or
   the oldest has waited ``reorder_delay_s`` (``poll``). A packet ``MAX_DROPOUT`` ahead or
   ``MAX_MISORDER`` behind is ``out_of_sequence``, unless it is the second in sequence of
   such a jump: then the sender restarted its numbering, and counting starts again there.

Where audio lands: each source is anchored on the call's shared ``Timeline`` when its first
packet is delivered (wall-clock time since the call's first packet, never before what the
track already holds), and from then on its RTP timestamps (extended past 2**32) place each
payload exactly, so lost packets and silence suppression come back as silence. A timestamp
that jumps back, or ahead of the call's clock by more than ``MAX_AHEAD_S``, re-anchors the
source instead, at the later of the call's clock and the track's end (a track that starts
or resumes late, however late, lands where the call's clock is). A sender that sends faster
than real time therefore keeps its audio, placed back to back at the track's end: its
track can run ahead of the clock, up to ``CALLVAULT_CALLS__MAX_DURATION``.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import pylibsrtp

from gateway.ingest.events import Audio, Dtmf, Event, Track
from storage.errors import StorageError
from storage.media.codecs import Codec

__all__ = [
    "DROP_REASONS",
    "AudioRun",
    "MIN_SEQUENTIAL",
    "PayloadTypes",
    "RtpError",
    "RtpPacket",
    "RtpTrackReceiver",
    "SrtpKey",
    "Timeline",
    "parse_rtp",
]

SRTP_SUITE = "AES_CM_128_HMAC_SHA1_80"
"""The one SDES crypto suite offered (RFC 4568): AES-128 counter mode, 80-bit HMAC-SHA1."""
KEY_LENGTH = 30
"""Master key (16 bytes) and master salt (14 bytes) of ``SRTP_SUITE``."""

PT_PCMU = 0
PT_PCMA = 8
PT_CN = 13
STATIC_PAYLOAD_TYPES = {"pcmu": PT_PCMU, "pcma": PT_PCMA}
DYNAMIC_PAYLOAD_TYPES = range(96, 128)
DEFAULT_TELEPHONE_EVENT = 101
"""The payload type most PBXs give RFC 4733 telephone events when nobody says otherwise."""

MAX_SRTP_PACKET = 1500
"""Bytes; pylibsrtp unprotects in a buffer of this size and raises ``ValueError`` for a
longer datagram, so one is refused (``malformed``) before it gets there. (Found by fuzzing:
a peer's 1501-byte datagram made the receiver raise, one logged traceback per datagram.)"""

MIN_SEQUENTIAL = 2
"""Packets in sequence a new SSRC must send before it replaces the current source."""
MAX_DROPOUT = 3000
"""A packet this far ahead is not a gap but a stray, or a restart of the sender's numbering
when the next packet follows it in sequence (RFC 3550 §A.1)."""
MAX_MISORDER = 100
"""The same, this far behind (only plain RTP shows it: SRTP's replay window refuses such
packets first)."""
RELATCH_AFTER_S = 1.0
"""How long the latched source must be silent before an authenticated packet from another
address may take over (SRTP only)."""
MAX_AHEAD_S = 5.0
"""A timestamp placing audio more than this far ahead of the call's clock (wall-clock time
since its first packet) re-anchors the source, at the later of the clock and the track's
end: a timestamp cannot jump the track ahead. (Measured from the clock alone, not from the
track's end if later: that let each packet jump this far past the one before, 5 s a
packet.) A sender faster than real time is still placed back to back, up to
``CALLVAULT_CALLS__MAX_DURATION``; the throughput benchmark (bench/rtp.py) floods so."""
MAX_BACKSTEP_S = 0.1
"""A timestamp more than this far behind the track's end re-anchors the source."""

DROP_REASONS = (
    "malformed",
    "rtcp",
    "unexpected_source",
    "auth_failed",
    "replay",
    "unexpected_payload_type",
    "bad_payload",
    "stale_source",
    "duplicate",
    "late",
    "out_of_sequence",
)
"""Why a datagram is not delivered; the ``reason`` label of the drop counter."""
DELIVERED = ("audio", "telephone_event", "comfort_noise")
"""What a delivered packet was; the same counter's other labels."""

# RFC 4733 §3.2 event codes 0-15 are the DTMF symbols.
_DTMF = "0123456789*#ABCD"
_HEADER = struct.Struct("!BBHII")
_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32
_TS_HALF = 1 << 31
_WINDOW_BITS = 64
_WINDOW_MASK = (1 << _WINDOW_BITS) - 1


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet."""


@dataclass(frozen=True, slots=True)
class SrtpKey:
    """An SDES master key and salt. Its ``repr`` hides the key: keys never reach logs."""

    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.material) != KEY_LENGTH:
            raise ValueError(f"an {SRTP_SUITE} key is {KEY_LENGTH} bytes of key and salt")

    @classmethod
    def generate(cls) -> SrtpKey:
        return cls(secrets.token_bytes(KEY_LENGTH))

    @classmethod
    def from_sdes(cls, text: str) -> SrtpKey:
        """The key of an SDES crypto attribute value, ``AES_CM_128_HMAC_SHA1_80
        inline:<base64>`` (lifetime and MKI parameters are not offered, so not accepted)."""
        suite, _, params = text.partition(" ")
        if suite != SRTP_SUITE or not params.startswith("inline:") or "|" in params:
            raise ValueError(f"not an {SRTP_SUITE} inline key")
        try:
            return cls(base64.b64decode(params[len("inline:") :], validate=True))
        except binascii.Error:
            raise ValueError("the inline key is not base64") from None

    def sdes(self) -> str:
        """The key as the announcement hands it out (RFC 4568 ``inline:`` key params)."""
        return f"{SRTP_SUITE} inline:{base64.b64encode(self.material).decode()}"

    def session(self, *, outbound: bool = False) -> pylibsrtp.Session:
        """A libsrtp session that unprotects (or, for test senders, protects) any SSRC."""
        policy = pylibsrtp.Policy(
            key=self.material,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND
            if outbound
            else pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
        )
        if outbound:
            policy.allow_repeat_tx = True  # test senders duplicate packets on purpose
        return pylibsrtp.Session(policy)


class RtpPacket(NamedTuple):
    """The parts of an RTP packet (RFC 3550 §5.1) the receiver uses. (A named tuple, not a
    frozen dataclass: one is built per datagram, and tuples are several times cheaper.)"""

    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse a (cleartext) RTP packet: version 2, CSRC list, header extension and padding
    are stepped over; ``RtpError`` for anything that does not add up."""
    if len(data) < _HEADER.size:
        raise RtpError(f"{len(data)} bytes is shorter than an RTP header")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise RtpError(f"RTP version {first >> 6}, not 2")
    start = _HEADER.size + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: profile (16 bits), length in 32-bit words
        if len(data) < start + 4:
            raise RtpError("the header extension is cut off")
        start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
    end = len(data)
    if first & 0x20:  # padding: the last byte counts the padding bytes, itself included
        padding = data[-1]
        if padding == 0:
            raise RtpError("padding of zero bytes")
        end -= padding
    if start > end:
        raise RtpError("the header, extension and padding are longer than the packet")
    return RtpPacket(
        marker=bool(second & 0x80),
        payload_type=second & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(data[start:end]),
    )


@dataclass(frozen=True, slots=True)
class PayloadTypes:
    """Which payload types carry the call's audio and its telephone events."""

    audio: int | None
    """The audio's payload type; ``None`` (Opus not pinned): any dynamic type but the
    telephone events'."""
    telephone_event: int = DEFAULT_TELEPHONE_EVENT

    @classmethod
    def for_codec(
        cls, codec: str, *, opus: int | None = None, telephone_event: int | None = None
    ) -> PayloadTypes:
        events = DEFAULT_TELEPHONE_EVENT if telephone_event is None else telephone_event
        return cls(STATIC_PAYLOAD_TYPES.get(codec, opus), events)

    def kind(self, payload_type: int) -> str | None:
        """``"audio"``, ``"telephone_event"``, ``"comfort_noise"`` or ``None``."""
        if payload_type == self.audio:
            return "audio"
        if payload_type == self.telephone_event:
            return "telephone_event"
        if payload_type == PT_CN:
            return "comfort_noise"
        if self.audio is None and payload_type in DYNAMIC_PAYLOAD_TYPES:
            return "audio"
        return None


class Timeline:
    """A call's clock, shared by its tracks: sample 0 is the arrival of the call's first
    delivered packet, whichever track it was on."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.origin: float | None = None

    def elapsed(self, now: float) -> int:
        """Samples since the call's first packet (``now`` is the first if none came yet)."""
        if self.origin is None:
            self.origin = now
        return round((now - self.origin) * self.rate)

    def anchor(self, now: float, not_before: int) -> int:
        """Where a source whose first packet is delivered at ``now`` starts: the time
        since the call's first packet, but never before ``not_before`` (what its track
        already holds)."""
        return max(not_before, self.elapsed(now))


@dataclass(slots=True)
class AudioRun:
    """Audio payloads of one track in the order a batch of datagrams released them, each
    with its place on the timeline: what ``receive_batch`` yields instead of an ``Audio``
    event per packet (the caller places the run at once: ``CallSession.place_run``)."""

    track: Track
    payloads: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    """``offsets[i]``: the timeline sample where ``payloads[i]`` starts."""


class _Held(NamedTuple):
    packet: RtpPacket
    kind: str
    arrived: float


@dataclass(slots=True)
class _Candidate:
    """A new SSRC on probation."""

    ssrc: int
    packets: list[_Held]


def unprotector(session: pylibsrtp.Session) -> Callable[[bytes], bytes]:
    """``session.unprotect`` for datagrams of at most ``MAX_SRTP_PACKET`` bytes, without
    the per-call work of pylibsrtp's Python wrapper (a new ``int *``, type and length
    checks, three calls): the same libsrtp call on the session's own buffer, the same
    result and the same ``pylibsrtp.Error``. Where pylibsrtp's internals are not those of
    the pinned 1.0.0, it is ``session.unprotect`` itself."""
    try:
        ffi = getattr(pylibsrtp, "ffi")  # noqa: B009 - the binding pylibsrtp imports
        lib = getattr(pylibsrtp, "lib")  # noqa: B009
        # The session's own pointer, which frees the libsrtp session when it is collected:
        # held (and read per call) so that the session lives as long as this function.
        handle = getattr(session, "_srtp")  # noqa: B009 - private: checked here
        handle[0]
        cdata = getattr(session, "_cdata")  # noqa: B009
        buffer = getattr(session, "_buffer")  # noqa: B009
        unprotect_c = lib.srtp_unprotect
        ok = lib.srtp_err_status_ok
        errors = list(getattr(pylibsrtp, "ERRORS"))  # noqa: B009
        if len(cdata) < MAX_SRTP_PACKET:
            return session.unprotect
    except (AttributeError, TypeError, IndexError):
        return session.unprotect
    length = ffi.new("int *")

    def unprotect(data: bytes) -> bytes:
        size = len(data)
        length[0] = size
        buffer[0:size] = data
        status = unprotect_c(handle[0], cdata, length)
        if status != ok:
            raise pylibsrtp.Error(errors[status])
        return bytes(buffer[0 : length[0]])

    return unprotect


class RtpTrackReceiver:
    """One track's UDP port: datagrams in, ``Audio``/``Dtmf`` events out, drops counted.

    ``count`` is called once per datagram with its outcome (a ``DROP_REASONS`` or
    ``DELIVERED`` label), except for the datagrams that become ``Audio`` events: the caller
    counts those once it knows what became of them (stored as ``audio``, or dropped after
    all). A new SSRC's packets on probation are counted once it is accepted or given up.
    Nothing here raises for what a peer sends.
    """

    def __init__(
        self,
        *,
        track: Track,
        codec: Codec,
        payload_types: PayloadTypes,
        key: SrtpKey | None,
        timeline: Timeline,
        count: Callable[[str], None],
        reorder_depth: int = 5,
        reorder_delay_s: float = 0.06,
    ) -> None:
        self.track = track
        self._codec = codec
        self._bytes_per_sample = codec.bytes_per_sample
        self._types = payload_types
        self._audio_type = -1
        """The payload type of the audio last delivered (the fast path's)."""
        self._srtp = key.session() if key is not None else None
        self._unprotect = unprotector(self._srtp) if self._srtp is not None else None
        """``receive_batch``'s unprotect (of datagrams it checked are short enough)."""
        self._timeline = timeline
        self._count = count
        self._depth = reorder_depth
        self._delay = reorder_delay_s
        self.source: tuple[str, int] | None = None
        """The latched source address (host, port)."""
        self.last_packet_at: float | None = None
        """When the last datagram that authenticated arrived."""
        self._ssrc: int | None = None
        self._source_at = 0.0
        """When the current SSRC last sent a packet."""
        self._retired: set[int] = set()
        self._candidate: _Candidate | None = None
        self._next = 0
        """Extended sequence number of the next packet to deliver."""
        self._window = 0
        """Bit i: extended sequence ``_next - 1 - i`` was delivered (duplicate detection)."""
        self._restart: int | None = None
        """The sequence number that would confirm a restart of the sender's numbering."""
        self._held: dict[int, _Held] = {}
        self._end = 0
        """End of the track's audio on the timeline (samples)."""
        self._anchor = 0
        self._ts_base = 0
        self._ts_last = 0
        self._ts_ext = 0
        self._anchored = False
        self._event_ts: int | None = None
        self._max_ahead = round(MAX_AHEAD_S * timeline.rate)
        self._max_backstep = round(MAX_BACKSTEP_S * timeline.rate)

    @property
    def anchored(self) -> bool:
        """Its current source's audio has a place on the call's timeline."""
        return self._anchored

    @property
    def deadline(self) -> float | None:
        """When ``poll`` should next run (a gap is being waited for), if ever."""
        if not self._held:
            return None
        return min(held.arrived for held in self._held.values()) + self._delay

    # --- datagrams ------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> list[Event]:
        """Take one datagram from ``addr``; return the events it releases, in order."""
        if len(data) < _HEADER.size or data[0] >> 6 != 2:
            self._count("malformed")
            return []
        if 192 <= data[1] <= 223:  # RTCP payload types 64-95 with the marker bit (RFC 5761)
            self._count("rtcp")
            return []
        if self.source is not None and addr != self.source and not self._may_relatch(now):
            self._count("unexpected_source")
            return []
        if self._srtp is not None:
            if len(data) > MAX_SRTP_PACKET:
                self._count("malformed")
                return []
            try:
                data = self._srtp.unprotect(data)
            except pylibsrtp.Error as e:
                self._srtp_refused(e)
                return []
        return self._receive_clear(data, addr, now)

    def receive_batch(
        self, datagrams: Sequence[tuple[bytes, tuple[str, int]]], now: float
    ) -> list[Event | AudioRun]:
        """Take the datagrams one socket read in one go (``(datagram, source)`` pairs, in
        arrival order, all at ``now``): exactly what ``receive_datagram`` would do fed them
        one by one, but the audio comes out as ``AudioRun``s (consecutive payloads in one
        run; a ``Dtmf`` event between them starts a new one) and the common packet (from
        the latched source, authenticated, the next in sequence of the current SSRC and
        payload type, nothing held) costs no event and no parse."""
        out: list[Event | AudioRun] = []
        run: AudioRun | None = None
        unprotect = self._unprotect
        header = _HEADER.size
        clock: int | None = None
        """The call's clock in samples (``Timeline.elapsed``), the same for the whole batch:
        ``now`` is."""
        for data, addr in datagrams:
            if (
                addr != self.source
                or not header <= len(data) <= MAX_SRTP_PACKET
                or data[0] >> 6 != 2
                or 192 <= data[1] <= 223
            ):
                events = self.receive_datagram(data, addr, now)  # every check, in order
            else:
                if unprotect is not None:
                    try:
                        data = unprotect(data)
                    except pylibsrtp.Error as e:
                        self._srtp_refused(e)
                        continue
                if data[0] == 0x80 and self._anchored and not self._held:
                    # receive_datagram's fast path, inlined (the same steps, in order).
                    _, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
                    if (
                        ssrc == self._ssrc
                        and sequence == self._next % _SEQ_MOD
                        and second & 0x7F == self._audio_type
                    ):
                        payload = data[header:]
                        samples = (
                            len(payload) if self._bytes_per_sample == 1 else self._samples(payload)
                        )
                        if samples:
                            self.last_packet_at = self._source_at = now
                            # _position's common case, inlined: the timestamp's place is
                            # within the bounds, so it stands (else _position re-anchors,
                            # from the same state: nothing is changed before it runs).
                            step = (timestamp - self._ts_last) % _TS_MOD
                            if step >= _TS_HALF:
                                step -= _TS_MOD
                            position = self._anchor + self._ts_ext + step - self._ts_base
                            if clock is None:
                                clock = self._timeline.elapsed(now)
                            lowest = self._end - self._max_backstep
                            if (lowest if lowest > 0 else 0) <= position <= clock + self._max_ahead:
                                self._ts_ext += step
                                self._ts_last = timestamp
                            else:
                                # _position's re-anchor, inlined (Timeline.anchor: the later
                                # of the clock and the track's end), the common case of a
                                # sender faster than real time.
                                position = self._end if self._end > clock else clock
                                self._anchor = position
                                self._ts_last = self._ts_ext = self._ts_base = timestamp
                            self._next += 1
                            self._window = (self._window << 1 | 1) & _WINDOW_MASK
                            self._end = position + samples
                            if run is None:
                                run = AudioRun(self.track)
                                out.append(run)
                            run.payloads.append(payload)
                            run.offsets.append(position)
                            continue
                events = self._receive_clear(data, addr, now)
            for event in events:
                if isinstance(event, Audio):
                    if run is None:
                        run = AudioRun(self.track)
                        out.append(run)
                    run.payloads.append(event.payload)
                    run.offsets.append(event.offset or 0)  # never None: set by _deliver
                else:
                    run = None
                    out.append(event)
        return out

    def _srtp_refused(self, e: pylibsrtp.Error) -> None:
        self._count("replay" if "replay" in str(e) or "old" in str(e) else "auth_failed")

    def _receive_clear(self, data: bytes, addr: tuple[str, int], now: float) -> list[Event]:
        """A datagram that passed the source and SRTP checks (``data``: the RTP packet)."""
        if data[0] == 0x80 and self._anchored and not self._held:
            # The common case, taken without building anything: a plain header (no CSRC,
            # extension or padding) from the current source and payload type, the very
            # next sequence number, nothing waiting in the reorder buffer. It must end
            # exactly as the general path below would.
            _, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
            if (
                ssrc == self._ssrc
                and sequence == self._next % _SEQ_MOD
                and second & 0x7F == self._audio_type
            ):
                payload = data[_HEADER.size :]
                samples = self._samples(payload)
                if samples:
                    self.source = addr
                    self.last_packet_at = self._source_at = now
                    position = self._position(timestamp, now)
                    self._advance()
                    self._end = position + samples
                    return [Audio(self.track, payload, None, sequence, position)]
        try:
            packet = parse_rtp(data)
        except RtpError:
            self._count("malformed")
            return []
        kind = self._types.kind(packet.payload_type)
        if kind is None:
            self._count("unexpected_payload_type")
            return []
        if kind == "audio" and not self._samples(packet.payload):
            self._count("bad_payload")
            return []
        self.source = addr
        self.last_packet_at = now
        held = _Held(packet, kind, now)
        if packet.ssrc != self._ssrc:
            return self._other_source(held, now)
        self._source_at = now
        return self._sequence(held, now)

    def _samples(self, payload: bytes) -> int:
        """The samples an audio payload covers; 0 for one that cannot be the call's codec
        (empty, or not an Opus packet)."""
        if self._bytes_per_sample == 1:
            return len(payload)
        try:
            return self._codec.frames(payload)
        except StorageError:
            return 0

    def _may_relatch(self, now: float) -> bool:
        last = self.last_packet_at
        return self._srtp is not None and (last is None or now - last >= RELATCH_AFTER_S)

    def poll(self, now: float) -> list[Event]:
        """Give up the gaps that have been waited for long enough; the released events."""
        events: list[Event] = []
        while self._held and min(h.arrived for h in self._held.values()) + self._delay <= now:
            self._skip_to(min(self._held))
            self._release(events, now)
        return events

    def drain(self, now: float) -> list[Event]:
        """Everything still held, in order, gaps given up (the call is ending); a new SSRC
        still on probation is given up."""
        events: list[Event] = []
        self._flush_held(events, now)
        if self._candidate is not None:
            for _ in self._candidate.packets:
                self._count("stale_source")
            self._candidate = None
        return events

    def _flush_held(self, events: list[Event], now: float) -> None:
        while self._held:
            self._skip_to(min(self._held))
            self._release(events, now)

    # --- sources --------------------------------------------------------------------------

    def _other_source(self, held: _Held, now: float) -> list[Event]:
        ssrc = held.packet.ssrc
        if self._ssrc is None:
            self._start_source(held.packet, now)
            return self._sequence(held, now)
        if ssrc in self._retired and now - self._source_at < RELATCH_AFTER_S:
            self._count("stale_source")
            return []
        candidate = self._candidate
        if (
            candidate is None
            or candidate.ssrc != ssrc
            or held.packet.sequence != (candidate.packets[-1].packet.sequence + 1) % _SEQ_MOD
        ):
            for _ in candidate.packets if candidate is not None else ():
                self._count("stale_source")  # a would-be source that did not keep going
            candidate = self._candidate = _Candidate(ssrc, [])
        candidate.packets.append(held)
        if len(candidate.packets) < MIN_SEQUENTIAL:
            return []  # counted once it is accepted or given up
        # The new source is real: what the old one left is delivered, then the new one's.
        events: list[Event] = []
        self._flush_held(events, now)
        assert self._ssrc is not None  # noqa: S101 - set before any candidate exists
        self._retired.add(self._ssrc)
        self._candidate = None
        self._retired.discard(ssrc)
        self._start_source(candidate.packets[0].packet, now)
        for waiting in candidate.packets:
            events += self._sequence(waiting, now)
        return events

    def _start_source(self, packet: RtpPacket, now: float) -> None:
        self._ssrc = packet.ssrc
        self._source_at = now
        self._next = packet.sequence
        self._window = 0
        self._restart = None
        self._anchored = False
        self._event_ts = None

    # --- sequence -------------------------------------------------------------------------

    def _sequence(self, held: _Held, now: float) -> list[Event]:
        delta = (held.packet.sequence - self._next) % _SEQ_MOD
        if delta >= _SEQ_MOD // 2:
            delta -= _SEQ_MOD
        ext = self._next + delta
        events: list[Event] = []
        if delta == 0 and not self._held:  # the common case: the next packet, nothing held
            self._deliver(held, events, now)
            self._advance()
            return events
        if delta <= -MAX_MISORDER or delta >= MAX_DROPOUT:
            if held.packet.sequence != self._restart:
                # Far out of sequence: a stray, or the first packet of a sender that
                # restarted its numbering; a second in sequence after it tells which.
                self._restart = (held.packet.sequence + 1) % _SEQ_MOD
                self._count("out_of_sequence")
                return events
            # The second in sequence (RFC 3550 §A.1): counting starts again here.
            self._flush_held(events, now)
            self._restart = None
            self._next = ext
            self._window = 0
            self._deliver(held, events, now)
            self._advance()
            return events
        if delta < 0:
            back = -delta - 1
            seen = back < _WINDOW_BITS and self._window >> back & 1
            self._count("duplicate" if seen else "late")
            return events
        if ext in self._held:
            self._count("duplicate")
            return events
        self._held[ext] = held
        self._release(events, now)
        if len(self._held) > self._depth:
            self._skip_to(min(self._held))
            self._release(events, now)
        return events

    def _release(self, events: list[Event], now: float) -> None:
        while self._next in self._held:
            self._deliver(self._held.pop(self._next), events, now)
            self._advance()

    def _advance(self) -> None:
        self._next += 1
        self._window = (self._window << 1 | 1) & _WINDOW_MASK

    def _skip_to(self, ext: int) -> None:
        gap = ext - self._next
        self._window = (
            (self._window << gap) & ((1 << _WINDOW_BITS) - 1) if gap < _WINDOW_BITS else 0
        )
        self._next = ext

    # --- delivery -------------------------------------------------------------------------

    def _deliver(self, held: _Held, events: list[Event], now: float) -> None:
        packet, kind = held.packet, held.kind
        if kind == "comfort_noise":
            self._count(kind)
            return
        if kind == "telephone_event":
            self._count(kind)
            # One event spans packets with the same timestamp (its start); its end is sent
            # three times. Reported once, when first seen.
            payload = packet.payload
            if len(payload) >= 4 and payload[0] < len(_DTMF) and packet.timestamp != self._event_ts:
                self._event_ts = packet.timestamp
                events.append(Dtmf(digit=_DTMF[payload[0]], track=self.track))
            return
        samples = self._samples(packet.payload)
        self._audio_type = packet.payload_type
        position = self._position(packet.timestamp, now)
        events.append(
            Audio(
                track=self.track,
                payload=packet.payload,
                timestamp_ms=None,
                sequence=packet.sequence,
                offset=position,
            )
        )
        self._end = position + samples

    def _position(self, timestamp: int, now: float) -> int:
        """The timeline sample where a packet with RTP ``timestamp`` starts."""
        if self._anchored:
            step = (timestamp - self._ts_last) % _TS_MOD
            if step >= _TS_MOD // 2:
                step -= _TS_MOD
            self._ts_ext += step
            self._ts_last = timestamp
            position = self._anchor + self._ts_ext - self._ts_base
            lowest = max(0, self._end - self._max_backstep)
            # The clock alone bounds it: were the track's end a bound too, each packet
            # could land MAX_AHEAD_S past the last one's end, and ratchet the track ahead.
            highest = self._timeline.elapsed(now) + self._max_ahead
            if lowest <= position <= highest:
                return position
        # A new source, or its clock jumped: it starts where the call's clock says.
        self._anchored = True
        self._anchor = self._timeline.anchor(now, self._end)
        self._ts_last = timestamp
        self._ts_ext = self._ts_base = timestamp
        return self._anchor
