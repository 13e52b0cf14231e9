"""The track plaintext layout round-trips, G.711 matches the standard, and stereo export puts
every sample where its record says, against independent scalar and brute-force references."""

from __future__ import annotations

import io
import struct
import wave
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import http_status
from storage.errors import StorageError, UnsupportedMedia
from storage.media.codecs import CODECS, Codec, codec
from storage.media.timeline import stereo_pcm
from storage.media.tracks import (
    MAX_RECORD_PAYLOAD,
    RECORD_HEADER,
    RecordParser,
    TrackRecord,
    encode_record,
    track_frames,
)
from storage.media.wav import wav_header

PCMU = CODECS["pcmu"]
PCMA = CODECS["pcma"]
L16 = CODECS["l16"]
ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32)

# --- helpers -----------------------------------------------------------------------------


async def records_of(records: Sequence[TrackRecord]) -> AsyncIterator[TrackRecord]:
    """An async iterator over ``records``, like the one the export builds from a reader."""
    for record in records:
        yield record


async def collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in chunks]


def as_stereo(pcm: bytes) -> np.ndarray:
    """Interleaved little-endian int16 stereo as a (frames, 2) array."""
    return np.frombuffer(pcm, dtype="<i2").reshape(-1, 2)


def render_reference(
    left: Sequence[TrackRecord] | None,
    right: Sequence[TrackRecord] | None,
    codec: Codec,
    frames: int,
) -> np.ndarray:
    """Brute force: the whole timeline in memory, each record written over it in order."""
    out = np.zeros((frames, 2), dtype=np.int16)
    for channel, records in enumerate((left, right)):
        for record in records or ():
            samples = codec.decode(record.payload)
            for i, sample in enumerate(samples):
                if record.offset + i < frames:
                    out[record.offset + i, channel] = sample
    return out


# --- scalar G.711 references (ITU-T G.191 formulations, not the tables under test) ---------


def ulaw_expand(code: int) -> int:
    """G.191 ``ulaw_expand``: half-step reconstruction of the complemented code."""
    sign = -1 if code < 0x80 else 1
    inverted = ~code & 0xFF
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    step = 4 << (exponent + 1)
    return sign * ((0x80 << exponent) + step * mantissa + step // 2 - 4 * 33)


def alaw_expand(code: int) -> int:
    """G.191 ``alaw_expand``: even bits toggled, mid-step reconstruction."""
    toggled = code ^ 0x55
    exponent = (toggled & 0x7F) >> 4
    mantissa = toggled & 0x0F
    if exponent > 0:
        mantissa += 16  # the implied leading one
    value = (mantissa << 4) + 8
    if exponent > 1:
        value <<= exponent - 1
    return value if toggled & 0x80 else -value


def ulaw_compress(sample: int) -> int:
    """The Reese/Campbell ``linear2ulaw`` (bias 0x84, clip 32635), exponent by bit length."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sample < 0 else sample, 32635) + 0x84
    exponent = max((magnitude >> 7).bit_length() - 1, 0)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def alaw_compress(sample: int) -> int:
    """G.191 ``alaw_compress``: ones' complement for negatives, exponent found by shifting."""
    ix = (~sample if sample < 0 else sample) >> 4
    if ix > 15:
        exponent = 1
        while ix > 16 + 15:
            ix >>= 1
            exponent += 1
        ix = ix - 16 + (exponent << 4)
    if sample >= 0:
        ix |= 0x80
    return ix ^ 0x55


# --- records -----------------------------------------------------------------------------


def test_record_layout_is_offset_u64_length_u32_little_endian() -> None:
    assert RECORD_HEADER.size == 12
    assert encode_record(0x0102030405060708, b"ab") == (
        bytes([8, 7, 6, 5, 4, 3, 2, 1]) + bytes([2, 0, 0, 0]) + b"ab"
    )
    assert encode_record(5, bytearray(b"")) == struct.pack("<QI", 5, 0)
    assert encode_record(2**64 - 1, memoryview(b"x"))[:8] == b"\xff" * 8


@pytest.mark.parametrize("offset", [-1, 2**64])
def test_encode_record_refuses_an_offset_outside_u64(offset: int) -> None:
    with pytest.raises(ValueError, match="offset"):
        encode_record(offset, b"")


def test_encode_record_refuses_an_oversize_payload() -> None:
    with pytest.raises(ValueError, match="limit"):
        encode_record(0, bytes(MAX_RECORD_PAYLOAD + 1))


record_lists = st.lists(
    st.builds(
        TrackRecord,
        offset=st.integers(min_value=0, max_value=2**64 - 1),
        payload=st.binary(max_size=40),
    ),
    max_size=8,
)


@settings(max_examples=100, deadline=None)
@given(records=record_lists, cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_records_round_trip_through_any_chunking(
    records: list[TrackRecord], cuts: list[int]
) -> None:
    stream = b"".join(encode_record(r.offset, r.payload) for r in records)
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    parser = RecordParser()
    parsed: list[TrackRecord] = []
    for start, stop in zip([0, *points], [*points, len(stream)], strict=True):
        parsed += parser.feed(memoryview(stream)[start:stop])
    parser.finish()
    assert parsed == records


def test_records_round_trip_at_every_split_point_and_byte_by_byte() -> None:
    records = [TrackRecord(0, b"abc"), TrackRecord(3, b""), TrackRecord(2**40, b"\x00" * 9)]
    stream = b"".join(encode_record(r.offset, r.payload) for r in records)
    for split in range(len(stream) + 1):
        parser = RecordParser()
        parsed = parser.feed(stream[:split]) + parser.feed(bytearray(stream[split:]))
        parser.finish()
        assert parsed == records, split
    parser = RecordParser()
    parsed = [r for i in range(len(stream)) for r in parser.feed(stream[i : i + 1])]
    parser.finish()
    assert parsed == records


def test_parser_returns_records_as_soon_as_they_complete() -> None:
    parser = RecordParser()
    first, second = encode_record(1, b"xy"), encode_record(2, b"z")
    assert parser.feed(first + second[:5]) == [TrackRecord(1, b"xy")]
    assert parser.feed(second[5:]) == [TrackRecord(2, b"z")]


def test_parser_refuses_an_oversize_length_as_soon_as_the_header_is_in() -> None:
    parser = RecordParser()
    assert parser.feed(RECORD_HEADER.pack(0, MAX_RECORD_PAYLOAD)) == []  # the limit itself is fine
    parser = RecordParser()
    parser.feed(encode_record(0, b"ok"))
    with pytest.raises(StorageError, match="limit") as caught:
        parser.feed(RECORD_HEADER.pack(7, MAX_RECORD_PAYLOAD + 1))
    assert caught.value.code == "storage_error"
    assert http_status(caught.value) == 500
    with pytest.raises(StorageError):  # the parser stays broken
        parser.feed(b"more")


@pytest.mark.parametrize(
    "tail",
    [
        b"\x00",  # a partial header
        RECORD_HEADER.pack(0, 4),  # a header without its payload
        encode_record(0, b"abcd")[:-1],  # a payload cut short
    ],
)
def test_finish_refuses_a_partial_record(tail: bytes) -> None:
    parser = RecordParser()
    assert parser.feed(encode_record(9, b"whole") + tail) == [TrackRecord(9, b"whole")]
    with pytest.raises(StorageError, match="inside a record"):
        parser.finish()


def test_finish_accepts_an_empty_stream() -> None:
    RecordParser().finish()


# --- G.711 -------------------------------------------------------------------------------


def test_ulaw_decode_matches_the_standard_for_all_256_codes() -> None:
    decoded = PCMU.decode(bytes(range(256)))
    assert decoded.dtype == np.int16
    assert decoded.tolist() == [ulaw_expand(code) for code in range(256)]
    pinned = {0xFF: 0, 0x7F: 0, 0x00: -32124, 0x80: 32124, 0xE7: 260, 0x67: -260}
    assert {code: int(decoded[code]) for code in pinned} == pinned


def test_alaw_decode_matches_the_standard_for_all_256_codes() -> None:
    decoded = PCMA.decode(bytes(range(256)))
    assert decoded.dtype == np.int16
    assert decoded.tolist() == [alaw_expand(code) for code in range(256)]
    pinned = {0xD5: 8, 0x55: -8, 0xAA: 32256, 0x2A: -32256, 0x80: 5504, 0x00: -5504}
    assert {code: int(decoded[code]) for code in pinned} == pinned


def test_ulaw_encode_matches_the_reference_for_every_int16() -> None:
    encoded = PCMU.encode(ALL_INT16.astype(np.int16))
    assert list(encoded) == [ulaw_compress(int(x)) for x in ALL_INT16]
    pinned = {0: 0xFF, -1: 0x7F, 1: 0xFF, 32767: 0x80, -32768: 0x00, 260: 0xE7, -260: 0x67}
    assert {x: PCMU.encode(np.array([x], np.int16))[0] for x in pinned} == pinned


def test_alaw_encode_matches_the_reference_for_every_int16() -> None:
    encoded = PCMA.encode(ALL_INT16.astype(np.int16))
    assert list(encoded) == [alaw_compress(int(x)) for x in ALL_INT16]
    # -1 must be the smallest negative level (the early Sun g711.c gave 0x5A, i.e. -248).
    pinned = {0: 0xD5, -1: 0x55, -7: 0x55, 15: 0xD5, 16: 0xD4, 32767: 0xAA, -32768: 0x2A}
    assert {x: PCMA.encode(np.array([x], np.int16))[0] for x in pinned} == pinned


@pytest.mark.parametrize("g711", [PCMU, PCMA], ids=lambda c: c.name)
def test_g711_round_trips_and_quantises_monotonically(g711: Codec) -> None:
    codes = bytes(range(256))
    levels = g711.decode(codes)
    again = g711.encode(levels)
    assert np.array_equal(g711.decode(again), levels)
    # Every code is its level's own code, except µ-law's negative zero (0x7F decodes to 0,
    # and 0 encodes to the positive zero 0xFF); A-law has no zero level, so no exception.
    changed = {code: again[code] for code in range(256) if again[code] != code}
    assert changed == ({0x7F: 0xFF} if g711 is PCMU else {})
    # A quantiser: larger input never decodes smaller, and every output is a level.
    quantised = g711.decode(g711.encode(ALL_INT16.astype(np.int16)))
    assert np.all(np.diff(quantised.astype(np.int32)) >= 0)
    assert set(quantised.tolist()) == set(levels.tolist())


def test_l16_is_little_endian_and_lossless() -> None:
    assert L16.decode(b"\x01\x00\xff\xff\x00\x80").tolist() == [1, -1, -32768]
    assert L16.encode(np.array([1, -1, -32768], np.int16)) == b"\x01\x00\xff\xff\x00\x80"
    samples = ALL_INT16.astype(np.int16)
    assert np.array_equal(L16.decode(L16.encode(samples)), samples)
    assert L16.decode(b"\x00\x01").tolist() == [256]  # not network byte order


def test_decode_returns_a_fresh_writable_array() -> None:
    payload = bytearray(b"\x01\x00")
    decoded = L16.decode(payload)
    decoded[0] = 7
    assert payload == b"\x01\x00"
    assert PCMU.decode(b"\xff").flags.writeable


def test_l16_decode_refuses_a_half_sample() -> None:
    with pytest.raises(StorageError, match="whole number"):
        L16.decode(b"\x00\x00\x00")


@pytest.mark.parametrize("name", ["pcmu", "pcma", "l16"])
def test_encode_refuses_samples_that_are_not_int16(name: str) -> None:
    with pytest.raises(TypeError, match="int16"):
        CODECS[name].encode(np.array([1, 2], dtype=np.int32))


def test_codecs_by_name() -> None:
    assert codec("pcmu") is PCMU
    assert (PCMU.name, PCMU.bytes_per_sample) == ("pcmu", 1)
    assert (PCMA.name, PCMA.bytes_per_sample) == ("pcma", 1)
    assert (L16.name, L16.bytes_per_sample) == ("l16", 2)
    assert sorted(CODECS) == ["l16", "opus", "pcma", "pcmu"]
    assert (codec("opus").bytes_per_sample, codec("opus").packetized) == (0, True)
    with pytest.raises(TypeError):
        CODECS["opus"] = L16  # type: ignore[index]
    with pytest.raises(UnsupportedMedia) as caught:
        codec("g729")
    assert caught.value.code == "unsupported_codec"
    assert http_status(caught.value) == 400


# --- WAV ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "rate", "frames"), [(2, 8000, 0), (2, 8000, 123), (1, 16000, 5)]
)
def test_wav_header_parses_with_the_wave_module(channels: int, rate: int, frames: int) -> None:
    header = wav_header(channels=channels, sample_rate=rate, frames=frames)
    assert len(header) == 44
    with wave.open(io.BytesIO(header + bytes(frames * channels * 2)), "rb") as wav:
        assert wav.getnchannels() == channels
        assert wav.getframerate() == rate
        assert wav.getnframes() == frames
        assert wav.getsampwidth() == 2
        assert wav.getcomptype() == "NONE"


def test_wav_header_refuses_what_riff_cannot_hold() -> None:
    with pytest.raises(ValueError, match="4 GiB"):
        wav_header(channels=2, sample_rate=8000, frames=2**30)
    wav_header(channels=2, sample_rate=8000, frames=(2**32 - 1 - 36) // 4)  # the largest
    with pytest.raises(ValueError, match="negative"):
        wav_header(channels=2, sample_rate=8000, frames=-1)
    with pytest.raises(ValueError, match="channels"):
        wav_header(channels=0, sample_rate=8000, frames=1)
    with pytest.raises(ValueError, match="sample rate"):
        wav_header(channels=2, sample_rate=0, frames=1)


async def test_a_whole_export_reads_back_as_a_wav() -> None:
    left = [TrackRecord(2, PCMU.encode(np.array([1000, -1000], np.int16)))]
    body = b"".join(await collect(stereo_pcm(records_of(left), None, codec=PCMU, frames=5)))
    with wave.open(io.BytesIO(wav_header(channels=2, sample_rate=8000, frames=5) + body)) as wav:
        frames = as_stereo(wav.readframes(5))
    assert frames[:, 0].tolist() == [0, 0, 988, -988, 0]  # µ-law levels nearest ±1000
    assert frames[:, 1].tolist() == [0] * 5


# --- stereo export -----------------------------------------------------------------------


async def test_tracks_are_placed_sample_exact_with_gaps_as_silence() -> None:
    left = [
        TrackRecord(0, L16.encode(np.array([1, 2, 3], np.int16))),
        TrackRecord(10, L16.encode(np.array([4, 5], np.int16))),
    ]
    right = [TrackRecord(4, L16.encode(np.array([-7, -8, -9, -10], np.int16)))]
    chunks = await collect(
        stereo_pcm(records_of(left), records_of(right), codec=L16, frames=14, block_frames=7)
    )
    assert [len(chunk) for chunk in chunks] == [28, 28]
    pcm = as_stereo(b"".join(chunks))
    assert pcm[:, 0].tolist() == [1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 4, 5, 0, 0]
    assert pcm[:, 1].tolist() == [0, 0, 0, 0, -7, -8, -9, -10, 0, 0, 0, 0, 0, 0]


async def test_samples_at_or_past_frames_are_dropped_and_the_tail_is_silence() -> None:
    left = [TrackRecord(3, bytes([0x80] * 6)), TrackRecord(50, bytes([0x80]))]
    chunks = await collect(stereo_pcm(records_of(left), None, codec=PCMU, frames=6, block_frames=4))
    assert [len(chunk) for chunk in chunks] == [16, 8]
    assert as_stereo(b"".join(chunks))[:, 0].tolist() == [0, 0, 0, 32124, 32124, 32124]
    chunks = await collect(stereo_pcm(records_of(left[:1]), None, codec=PCMU, frames=12))
    assert as_stereo(b"".join(chunks))[:, 0].tolist() == [0] * 3 + [32124] * 6 + [0] * 3


async def test_an_overlapping_later_record_wins_across_a_block_boundary() -> None:
    left = [
        TrackRecord(0, bytes([0x80] * 10)),  # µ-law 32124
        TrackRecord(5, bytes([0x00] * 4)),  # µ-law -32124, overlaps 5..8 across the 7 boundary
        TrackRecord(5, bytes([0xFF] * 1)),  # 0 at 5: the latest record wins again
    ]
    chunks = await collect(
        stereo_pcm(records_of(left), None, codec=PCMU, frames=12, block_frames=7)
    )
    hi, lo = 32124, -32124
    assert as_stereo(b"".join(chunks))[:, 0].tolist() == [hi] * 5 + [0, lo, lo, lo, hi, 0, 0]


async def test_missing_tracks_are_silence_and_zero_frames_yield_nothing() -> None:
    chunks = await collect(stereo_pcm(None, None, codec=PCMA, frames=20, block_frames=8))
    assert [len(chunk) for chunk in chunks] == [32, 32, 16]
    assert b"".join(chunks) == bytes(80)
    right = [TrackRecord(0, bytes([0xD5]))]
    pcm = as_stereo(
        b"".join(await collect(stereo_pcm(None, records_of(right), codec=PCMA, frames=2)))
    )
    assert pcm.tolist() == [[0, 8], [0, 0]]
    assert await collect(stereo_pcm(records_of(right), None, codec=PCMA, frames=0)) == []


@st.composite
def track_layouts(draw: st.DrawFn, width: int) -> list[TrackRecord] | None:
    """None, or records with non-decreasing offsets: gaps, overlaps, empty payloads."""
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    records = []
    offset = draw(st.integers(min_value=0, max_value=30))
    for _ in range(draw(st.integers(min_value=0, max_value=8))):
        length = draw(st.integers(min_value=0, max_value=40))
        payload = draw(st.binary(min_size=length * width, max_size=length * width))
        records.append(TrackRecord(offset, payload))
        offset += draw(st.integers(min_value=0, max_value=50))
    return records


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    name=st.sampled_from(["pcmu", "pcma", "l16"]),
    frames=st.integers(min_value=0, max_value=300),
    block_frames=st.integers(min_value=1, max_value=64),
)
async def test_stereo_pcm_matches_a_brute_force_render(
    data: st.DataObject, name: str, frames: int, block_frames: int
) -> None:
    g = CODECS[name]
    left = data.draw(track_layouts(g.bytes_per_sample), label="left")
    right = data.draw(track_layouts(g.bytes_per_sample), label="right")
    chunks = await collect(
        stereo_pcm(
            None if left is None else records_of(left),
            None if right is None else records_of(right),
            codec=g,
            frames=frames,
            block_frames=block_frames,
        )
    )
    assert all(0 < len(chunk) <= block_frames * 4 for chunk in chunks)
    pcm = b"".join(chunks)
    assert len(pcm) == frames * 4
    assert np.array_equal(as_stereo(pcm), render_reference(left, right, g, frames))


async def test_records_are_pulled_only_as_far_as_the_current_block_needs() -> None:
    pulled: list[int] = []
    closed: list[bool] = []

    async def track() -> AsyncIterator[TrackRecord]:
        try:
            for offset in range(0, 1000, 10):
                pulled.append(offset)
                yield TrackRecord(offset, bytes([0x80] * 10))
        finally:
            closed.append(True)

    export = stereo_pcm(track(), None, codec=PCMU, frames=95, block_frames=25)
    await anext(export)  # frames 0..24 need records 0..20, and 30 shows nothing else does
    assert pulled == [0, 10, 20, 30]
    await anext(export)
    assert pulled[-1] == 50
    rest = await collect(export)
    assert sum(map(len, rest)) == (95 - 50) * 4
    # The last block (75..94) needs the record at 100 to know 90 is the last one touching it;
    # nothing after that is read.
    assert pulled == list(range(0, 110, 10))
    assert closed == [True]


async def test_closing_the_export_early_closes_the_tracks() -> None:
    closed: list[str] = []

    async def track(name: str) -> AsyncIterator[TrackRecord]:
        try:
            for offset in range(0, 10**6, 8):
                yield TrackRecord(offset, bytes(8))
        finally:
            closed.append(name)

    export = stereo_pcm(track("left"), track("right"), codec=PCMU, frames=10**6, block_frames=8)
    await anext(export)
    await export.aclose()
    assert sorted(closed) == ["left", "right"]


async def test_a_record_that_goes_back_in_time_is_refused() -> None:
    left = [TrackRecord(10, bytes(4)), TrackRecord(9, bytes(4))]
    with pytest.raises(StorageError, match="increasing offset order"):
        await collect(stereo_pcm(records_of(left), None, codec=PCMU, frames=20))


async def test_a_payload_of_partial_samples_is_refused() -> None:
    right = [TrackRecord(0, b"\x00\x00\x00")]
    with pytest.raises(StorageError, match="whole number"):
        await collect(stereo_pcm(None, records_of(right), codec=L16, frames=4))


@pytest.mark.parametrize(("frames", "block_frames"), [(-1, 8), (8, 0)])
async def test_stereo_pcm_refuses_bad_sizes(frames: int, block_frames: int) -> None:
    export = stereo_pcm(None, None, codec=L16, frames=frames, block_frames=block_frames)
    with pytest.raises(ValueError, match="frames"):
        await anext(export)


# --- track length ------------------------------------------------------------------------


def test_track_frames_is_the_furthest_record_end() -> None:
    assert track_frames([], PCMU) == 0
    assert track_frames([TrackRecord(0, bytes(100)), TrackRecord(50, bytes(10))], PCMU) == 100
    assert track_frames([TrackRecord(7, bytes(6))], L16) == 10
    assert track_frames([TrackRecord(7, b"")], PCMA) == 7
    with pytest.raises(StorageError, match="whole number"):
        track_frames([TrackRecord(0, bytes(3))], L16)
