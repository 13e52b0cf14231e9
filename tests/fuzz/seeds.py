"""Writes the seed corpora (``tests/fuzz/corpus/<target>/``) from the frames the tests use:
the sample calls' µ-law audio, ``tests.rtp``'s RTP/SRTP sender and telephone events, the
AudioSocket encoder, the object writer, the record encoder. Deterministic: rerunning it
rewrites the same files (``python -m tests.fuzz.seeds``). Seeds are kept small (a few
packets each); the fuzzer mutates them into everything else.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from gateway.api.recordings import _encode_cursor
from gateway.ingest.audiosocket import (
    KIND_ERROR,
    audio_frame,
    dtmf_frame,
    encode_frame,
    hangup_frame,
    uuid_frame,
)
from gateway.ingest.rtp import PT_CN, PT_PCMA, PT_PCMU
from storage.catalog import Recording
from storage.media.codecs import CODECS
from storage.media.tracks import encode_record
from tests.fuzz import objectformat, rtp
from tests.fuzz.harness import frame_messages
from tests.rtp import RtpSender, opus_packets

CORPUS = Path(__file__).parent / "corpus"
CALLS = Path(__file__).parents[1] / "data" / "calls"
AUDIOSOCKET_ID = "7a3f1c2e-5b4d-4e6f-8a9b-0c1d2e3f4a5b"


def ulaw(frames: int, track: str = "inbound", at: float = 1.5) -> list[bytes]:
    """``frames`` 20 ms µ-law frames of a sample call's speech, from ``at`` seconds."""
    data = (CALLS / f"romanian.{track}.ulaw").read_bytes()
    start = int(at * 8000)
    return [data[start + 160 * i : start + 160 * (i + 1)] for i in range(frames)]


def l16(frames: int, samples: int = 160) -> list[bytes]:
    """The same speech as L16 little-endian (fork, AudioSocket)."""
    return [CODECS["pcmu"].decode(frame[:samples]).tobytes() for frame in ulaw(frames)]


# --- WebSocket transports ------------------------------------------------------------------


def twilio() -> dict[str, bytes]:
    sid = "MZ18ad3ab5a668481ce02b83e7395059f0"

    def start(**fields: object) -> str:
        body: dict[str, object] = {
            "accountSid": "AC0123456789abcdef0123456789abcdef",
            "streamSid": sid,
            "callSid": "CA0123456789abcdef0123456789abcdef",
            "tracks": ["inbound", "outbound"],
            "customParameters": {"token": "cvt_pbx_fuzz", "from": "+40712345678", "to": "+4021"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        body.update(fields)
        return json.dumps({"event": "start", "sequenceNumber": "1", "start": body})

    def media(payload: bytes, seq: int, track: str = "inbound") -> str:
        fields = {"track": track, "chunk": str(seq), "timestamp": str(20 * seq)}
        fields["payload"] = base64.b64encode(payload).decode()
        message = {"event": "media", "sequenceNumber": str(seq), "media": fields}
        return json.dumps({**message, "streamSid": sid})

    frames = ulaw(3)
    return {
        "call": frame_messages(
            [
                json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
                start(),
                *(media(frame, seq + 2) for seq, frame in enumerate(frames)),
                media(ulaw(1, "outbound")[0], 5, "outbound"),
                json.dumps({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "5"}}),
                json.dumps({"event": "mark", "mark": {"name": "greeting"}}),
                json.dumps({"event": "stop", "stop": {"callSid": "CA01"}}),
            ]
        ),
        "one-track": frame_messages(
            [
                start(tracks=["inbound"], customParameters={"call_id": "c-1"}),
                media(frames[0], 2),
                json.dumps({"event": "media", "media": {"track": "outbound", "payload": "//8="}}),
            ]
        ),
        "binary": frame_messages([start(), b"\x00\x01\x02"]),
        "no-tracks": frame_messages([start(tracks=[]), start(tracks="inbound")]),
    }


def fork() -> dict[str, bytes]:
    mono, stereo = l16(3), l16(2, 80)
    interleaved = [
        np.column_stack([np.frombuffer(f, "<i2"), np.frombuffer(f, "<i2")[::-1]]).tobytes()
        for f in stereo
    ]
    return {
        "mono": frame_messages(
            [
                json.dumps(
                    {"uuid": "6f0c", "from": "+40712345678", "to": "+4021", "token": "cvt_pbx_fuzz"}
                ),
                *mono,
                json.dumps({"event": "dtmf", "digit": "#"}),
                json.dumps({"event": "stop"}),
            ]
        ),
        "stereo": frame_messages(
            [
                json.dumps({"callSid": "CA01", "mixType": "stereo", "sampleRate": 16000}),
                *interleaved,
                json.dumps({"type": "dtmf", "dtmf": "a"}),
                json.dumps({"type": "stop"}),
            ]
        ),
        "channels": frame_messages(
            [json.dumps({"call_id": "c-1", "channels": 2, "sample_rate": 8000}), b"\x01\x02\x03"]
        ),
        "disagreeing": frame_messages(
            [
                json.dumps({"call_id": "c-1", "channels": 1, "mixType": "stereo"}),
                json.dumps({"call_id": "c-1", "sample_rate": 8000, "sampleRate": 16000}),
            ]
        ),
    }


def audiosocket() -> dict[str, bytes]:
    frames = [audio_frame(pcm) for pcm in l16(3)]
    return {
        "call": b"\x00"
        + uuid_frame(AUDIOSOCKET_ID)
        + b"".join(frames)
        # a DTMF digit, then the hangup
        + dtmf_frame("7")
        + hangup_frame(),
        "cut": b"\x07" + uuid_frame(AUDIOSOCKET_ID) + b"".join(frames[:2]),
        "error": b"\x2a" + uuid_frame(AUDIOSOCKET_ID) + encode_frame(KIND_ERROR, b"\x02"),
    }


# --- RTP and SRTP --------------------------------------------------------------------------


def record(datagram: bytes, *, ms: int = 20, flags: int = 0) -> bytes:
    return struct.pack("!BHH", flags, ms, len(datagram)) + datagram


def rtp_seeds(*, srtp: bool) -> dict[str, bytes]:
    """Each seed: a configuration byte, then records; with SRTP the packets go in plain
    with the protect flag (the harness protects them), or already protected."""
    protect = rtp.FLAG_PROTECT if srtp else 0
    out = rtp.FLAG_OUTBOUND

    def sender(pt: int, ssrc: int = 0x1234_5678) -> RtpSender:
        return RtpSender(payload_type=pt, ssrc=ssrc)

    inbound, outbound = sender(PT_PCMU), sender(PT_PCMU, 0x0BAD_CAFE)
    packets = [inbound.packet(frame) for frame in ulaw(4)]
    reply = [outbound.packet(frame) for frame in ulaw(2, "outbound")]
    call = [record(p, flags=protect) for p in packets[:2]]
    call += [record(reply[0], flags=protect | out), record(packets[3], flags=protect)]
    call += [record(packets[2], flags=protect), record(packets[2], flags=protect)]  # dup
    call += [record(p, ms=0, flags=protect) for p in inbound.dtmf(5)]
    call.append(record(inbound.packet(b"\x40", payload_type=PT_CN), flags=protect))
    call.append(record(reply[1], ms=100, flags=protect | out | rtp.FLAG_OTHER_ADDRESS))
    call.append(record(b"", ms=200, flags=rtp.FLAG_POLL))
    newcomer = sender(PT_PCMU, ssrc=0x5555_0001)
    newcomer.seq, newcomer.timestamp = 7, 1 << 31
    call += [record(newcomer.packet(frame), flags=protect) for frame in ulaw(2, at=3.0)]

    alaw = sender(PT_PCMA)
    pcma = [record(alaw.packet(frame), flags=protect) for frame in ulaw(3)]
    opus = sender(rtp.OPUS_PT)
    pcm = np.frombuffer(b"".join(l16(6)), "<i2").repeat(6)
    encoded = opus_packets(pcm, bit_rate=16_000)[:3]
    opus_records = [record(opus.packet(p, samples=960), flags=protect) for p in encoded]
    seeds = {
        "pcmu-call": bytes((0b0001_0000,)) + b"".join(call),
        "pcma": bytes((1,)) + b"".join(pcma),
        "opus-pinned": bytes((2,)) + b"".join(opus_records),
        "opus-dynamic": bytes((3 | 0x40,)) + b"".join(opus_records),
    }
    if srtp:
        keyed = RtpSender(payload_type=PT_PCMU, key=rtp.KEYS["inbound"], seq=65534)
        protected = [record(keyed.packet(frame)) for frame in ulaw(4)]
        replayed = protected + protected[1:2]
        seeds["protected"] = bytes((0,)) + b"".join(replayed)
    return seeds


# --- stored data ---------------------------------------------------------------------------


def sealed(segment_size: int, plaintext: bytes, flush_every: int = 0) -> bytes:
    writer = objectformat.writer(segment_size)
    out = bytearray()
    step = flush_every or len(plaintext) or 1
    for pos in range(0, len(plaintext), step):
        out += writer.write(plaintext[pos : pos + step])
        if flush_every:
            out += writer.flush()
    return bytes(out + writer.close())


def objectformat_seeds() -> dict[str, bytes]:
    track = b"".join(encode_record(160 * i, frame) for i, frame in enumerate(ulaw(3)))
    structured = struct.pack("!BBBHB", 1, 48, 5, 0x2011, 2) + b"\x00\x01\x00\x03"
    return {
        "empty": b"\x00\x00\x00" + sealed(64, b""),
        "short": b"\x00\x03\x00" + sealed(64, b"hello, callvault"),
        "track-flushed": b"\x00\x05\x01" + sealed(256, track, flush_every=200),
        "segments": b"\x00\x00\x00" + sealed(16, bytes(range(100))),
        "sealed": structured + struct.pack("!H", 300) + track[:300],
    }


def tracks_seeds() -> dict[str, bytes]:
    frames = ulaw(3)
    gap = [encode_record(0, frames[0]), encode_record(8000, frames[1])]
    opus = opus_packets(np.frombuffer(b"".join(l16(3)), "<i2").repeat(6), bit_rate=16_000)
    return {
        "pcmu": b"\x00" + b"".join(encode_record(160 * i, f) for i, f in enumerate(frames)),
        "gap-cut": b"\x05" + b"".join(gap),
        "l16": b"\x09" + b"".join(encode_record(160 * i, f) for i, f in enumerate(l16(2))),
        "opus": b"\x00" + b"".join(encode_record(960 * i, p) for i, p in enumerate(opus[:2])),
        "truncated": b"\x00" + encode_record(2**64 - 1, b"\xff\x7f")[:-1],
    }


def cursors_seeds() -> dict[str, bytes]:
    recording = Recording(
        id="rec_01HZX3V8Q2",
        tenant_id="acme",
        call_id="c-1",
        status="recorded",
        instructions_version=1,
        created_at=datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC),
        ended_at=None,
        audio_purged=False,
        failure_reason=None,
        deleted_at=None,
        delete_reason=None,
    )
    texts = {
        "cursor": (0, _encode_cursor(recording)),
        "time": (1, "2026-11-27T10:00:00Z"),
        "time-offset": (1, "2026-11-27T10:00:00.5+02:00"),
        "int": (2, "4611686018427387904"),
        "duration": (3, "P1Y2M10DT2H30M"),
        "duration-month-end": (3 + 5 * 2, "P1M"),
        "duration-seconds": (3 + 5 * 4, "PT30.25S"),
        "duration-weeks": (3 + 5 * 1, "P520W"),
        "number": (4, "+40 (712) 345.678"),
    }
    return {name: bytes((which,)) + text.encode() for name, (which, text) in texts.items()}


SEEDS: dict[str, Callable[[], dict[str, bytes]]] = {
    "twilio": twilio,
    "fork": fork,
    "audiosocket": audiosocket,
    "rtp": lambda: rtp_seeds(srtp=False),
    "srtp": lambda: rtp_seeds(srtp=True),
    "objectformat": objectformat_seeds,
    "tracks": tracks_seeds,
    "cursors": cursors_seeds,
}


def main() -> None:
    for target, make in SEEDS.items():
        folder = CORPUS / target
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, data in make().items():
            (folder / name).write_bytes(data)
        print(f"{target}: {len(list(folder.iterdir()))} seeds")


if __name__ == "__main__":
    main()
