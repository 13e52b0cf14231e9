"""A test RTP/SRTP sender built on pylibsrtp: packets that tests then drop, duplicate,
reorder, replay or corrupt on purpose, and a UDP socket to send them from."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from gateway.ingest.rtp import SrtpKey

OPUS_FRAME = 960
"""Samples of a 20 ms Opus frame at 48 kHz."""


@dataclass
class RtpSender:
    """Builds RTP packets for one SSRC and, with a key, protects them as SRTP.

    ``seq`` and ``timestamp`` are the next packet's; both wrap like the real fields."""

    payload_type: int
    key: SrtpKey | None = None
    ssrc: int = 0x1234_5678
    seq: int = 1000
    timestamp: int = 50_000
    _srtp: object = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.key is not None:
            self._srtp = self.key.session(outbound=True)

    def packet(
        self,
        payload: bytes,
        *,
        samples: int | None = None,
        marker: bool = False,
        payload_type: int | None = None,
        timestamp: int | None = None,
    ) -> bytes:
        """The next packet (protected if keyed); advances seq and, by ``samples`` (default
        ``len(payload)``), the timestamp."""
        pt = self.payload_type if payload_type is None else payload_type
        header = struct.pack(
            "!BBHII",
            0x80,
            (0x80 if marker else 0) | pt,
            self.seq,
            self.timestamp if timestamp is None else timestamp,
            self.ssrc,
        )
        self.seq = (self.seq + 1) % 65536
        self.timestamp = (self.timestamp + (len(payload) if samples is None else samples)) % (
            1 << 32
        )
        return self.protect(header + payload)

    def protect(self, rtp: bytes) -> bytes:
        if self._srtp is None:
            return rtp
        return bytes(self._srtp.protect(rtp))  # type: ignore[attr-defined]

    def stream(self, payload: bytes, size: int = 160) -> list[bytes]:
        """``payload`` (G.711) cut into packets of ``size`` samples."""
        return [self.packet(payload[i : i + size]) for i in range(0, len(payload), size)]

    def dtmf(
        self, event: int, *, updates: int = 3, step: int = 160, payload_type: int = 101
    ) -> list[bytes]:
        """One RFC 4733 telephone event (``event`` 0-15: ``0123456789*#ABCD``) as a PBX
        sends it: ``updates`` packets of growing duration (the first with the marker),
        then the end packet three times (§2.5.1.4), all stamped with the current timestamp
        (the event's start), which they do not advance."""
        start = self.timestamp
        packets = [
            self.packet(
                telephone_event(event, duration=step * (index + 1)),
                samples=0,
                marker=index == 0,
                payload_type=payload_type,
                timestamp=start,
            )
            for index in range(updates)
        ]
        end = telephone_event(event, end=True, duration=step * (updates + 1))
        packets += [
            self.packet(end, samples=0, payload_type=payload_type, timestamp=start)
            for _ in range(3)
        ]
        return packets


def telephone_event(
    event: int, *, end: bool = False, volume: int = 10, duration: int = 160
) -> bytes:
    """An RFC 4733 §2.3 telephone-event payload: event, E bit and volume, duration."""
    return struct.pack("!BBH", event, (0x80 if end else 0) | (volume & 0x3F), duration)


def opus_packets(pcm: npt.NDArray[np.int16], *, bit_rate: int = 64_000) -> list[bytes]:
    """``pcm`` (48 kHz mono) as 20 ms Opus packets from PyAV's libopus encoder: as many
    packets as cover ``pcm`` (the encoder's look-ahead tail is left out), so the packets
    decode to exactly ``ceil(len(pcm) / 960) * 960`` samples, delayed by the encoder's
    pre-skip."""
    import av

    context = av.CodecContext.create("libopus", "w")
    context.sample_rate = 48_000
    context.layout = "mono"
    context.format = "s16"
    context.bit_rate = bit_rate
    context.time_base = Fraction(1, 48_000)
    packets: list[bytes] = []
    for start in range(0, len(pcm), OPUS_FRAME):
        chunk = np.zeros(OPUS_FRAME, dtype=np.int16)
        part = pcm[start : start + OPUS_FRAME]
        chunk[: len(part)] = part
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = start
        packets += [bytes(packet) for packet in context.encode(frame)]
    packets += [bytes(packet) for packet in context.encode(None)]
    return packets[: -(-len(pcm) // OPUS_FRAME)]


def offer_key(offer: dict, track: str) -> SrtpKey:
    """The SRTP key an announcement's ``ingest.rtp`` gave ``track``."""
    return SrtpKey.from_sdes(offer["crypto"][track])


class UdpSender:
    """A loopback UDP socket that sends datagrams to the gateway's ports."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return host, port

    def send(self, datagram: bytes, port: int, host: str = "127.0.0.1") -> None:
        self.sock.sendto(datagram, (host, port))

    async def send_paced(
        self, datagrams: Iterable[bytes], port: int, *, every: float = 0.0, host: str = "127.0.0.1"
    ) -> None:
        """Send each datagram, sleeping ``every`` seconds between them (0: yield only)."""
        for datagram in datagrams:
            self.send(datagram, port, host)
            await asyncio.sleep(every)

    def close(self) -> None:
        self.sock.close()


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
