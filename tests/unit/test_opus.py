"""Opus as a track stores it: packet lengths from the TOC byte (RFC 6716 §3.1) against an
independent table, the decoder against packets from libopus itself, and the export path
(``storage.media.timeline``) that places decoded packets on the call's timeline."""

from __future__ import annotations

import fractions
from collections.abc import AsyncIterator, Sequence

import av
import numpy as np
import numpy.typing as npt
import pytest

from storage.errors import StorageError
from storage.media.codecs import Codec, codec
from storage.media.opus import OPUS_RATE, OpusDecoder, packet_samples
from storage.media.timeline import stereo_pcm
from storage.media.tracks import TrackRecord, track_frames

TONE_HZ = 440
FRAME_MS_20 = 960

# RFC 6716 Table 2, written out row by row rather than computed like the module does:
# configurations 0-11 SILK-only (NB, MB, WB: 10/20/40/60 ms), 12-15 hybrid (SWB, FB:
# 10/20 ms), 16-31 CELT-only (NB, WB, SWB, FB: 2.5/5/10/20 ms).
RFC6716_FRAME_MS: dict[int, float] = {
    **{config: (10, 20, 40, 60)[config % 4] for config in range(0, 12)},
    **{config: (10, 20)[config % 2] for config in range(12, 16)},
    **{config: (2.5, 5, 10, 20)[config % 4] for config in range(16, 32)},
}
MAX_SAMPLES = 120 * 48  # 120 ms at 48 kHz


def frame_samples(config: int) -> int:
    return round(RFC6716_FRAME_MS[config] * OPUS_RATE / 1000)


def toc(config: int, code: int, stereo: bool = False) -> int:
    return config << 3 | (0x04 if stereo else 0) | code


# --- packet_samples --------------------------------------------------------------------


def test_rfc_table_covers_every_configuration() -> None:
    """The reference table has the 32 configurations of RFC 6716 Table 2 (a sanity check of
    the test's own table: 12 SILK, 4 hybrid, 16 CELT)."""
    assert sorted(RFC6716_FRAME_MS) == list(range(32))
    assert [frame_samples(c) for c in (0, 1, 2, 3)] == [480, 960, 1920, 2880]
    assert [frame_samples(c) for c in (12, 13, 14, 15)] == [480, 960, 480, 960]
    assert [frame_samples(c) for c in (28, 29, 30, 31)] == [120, 240, 480, 960]


@pytest.mark.parametrize("stereo", [False, True])
@pytest.mark.parametrize("config", range(32))
def test_packet_samples_code_0_and_1_and_2(config: int, stereo: bool) -> None:
    """Code 0 is one frame, codes 1 and 2 two frames, of the configuration's duration; the
    stereo bit changes nothing."""
    frame = frame_samples(config)
    assert packet_samples(bytes([toc(config, 0, stereo)]) + b"\x55" * 20) == frame
    assert packet_samples(bytes([toc(config, 1, stereo)]) + b"\x55" * 20) == 2 * frame
    assert packet_samples(bytes([toc(config, 1, stereo)])) == 2 * frame  # two empty frames
    assert packet_samples(bytes([toc(config, 2, stereo), 3]) + b"\x55" * 7) == 2 * frame


@pytest.mark.parametrize("config", range(32))
def test_packet_samples_code_3_counts_frames_up_to_120_ms(config: int) -> None:
    """Code 3 takes its frame count from the low 6 bits of the second byte (the VBR and
    padding flags are ignored); up to 120 ms is accepted, one frame more is refused."""
    frame = frame_samples(config)
    most = MAX_SAMPLES // frame
    for count in range(1, most + 1):
        packet = bytes([toc(config, 3), count]) + b"\x00" * 4
        assert packet_samples(packet) == count * frame
    flagged = bytes([toc(config, 3), 0xC0 | 1, 0])  # VBR and padding bits set, one frame
    assert packet_samples(flagged) == frame
    if most + 1 <= 0x3F:
        with pytest.raises(StorageError, match="120 ms"):
            packet_samples(bytes([toc(config, 3), most + 1]) + b"\x00" * 4)


def test_packet_samples_limits() -> None:
    """The extremes RFC 6716 §3.2.5 allows: 48 CELT frames of 2.5 ms, two SILK frames of
    60 ms (code 1), both exactly 120 ms; a code-3 count of 63 short frames is too long."""
    assert packet_samples(bytes([toc(16, 3), 48])) == MAX_SAMPLES
    assert packet_samples(bytes([toc(3, 1), 0, 0])) == MAX_SAMPLES
    assert packet_samples(bytes([toc(3, 2), 0])) == MAX_SAMPLES
    with pytest.raises(StorageError):
        packet_samples(bytes([toc(16, 3), 0x3F]))
    with pytest.raises(StorageError):
        packet_samples(bytes([toc(3, 3), 3]))


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (b"", "empty"),
        (bytes([toc(31, 1)]) + b"\x00", "code-1"),
        (bytes([toc(31, 1)]) + b"\x00" * 3, "code-1"),
        (bytes([toc(0, 2)]), "code-2"),
        (bytes([toc(31, 3)]), "code-3"),
        (bytes([toc(31, 3), 0]), "at least one frame"),
        (bytes([toc(31, 3), 0xC0]), "at least one frame"),  # flags but no frames
        (bytes([toc(31, 3), 7]), "120 ms"),  # 7 x 20 ms
        (bytes([toc(11, 3), 3]), "120 ms"),  # 3 x 60 ms SILK
    ],
)
def test_packet_samples_refuses_what_cannot_be_opus(packet: bytes, message: str) -> None:
    """Each framing the RFC rules out is a ``StorageError`` saying which rule."""
    with pytest.raises(StorageError, match=message):
        packet_samples(packet)


def test_packet_samples_takes_any_buffer() -> None:
    """bytes, bytearray and memoryview are read alike (records hand out views)."""
    packet = bytes([toc(31, 3), 3]) + b"\x01\x02"
    assert packet_samples(packet) == 3 * 960
    assert packet_samples(bytearray(packet)) == 3 * 960
    with memoryview(packet) as view:
        assert packet_samples(view) == 3 * 960
    with pytest.raises(StorageError):
        packet_samples(bytearray())


# --- OpusDecoder on libopus packets ----------------------------------------------------


def tone(seconds: float, hz: float = TONE_HZ) -> npt.NDArray[np.int16]:
    t = np.arange(round(seconds * OPUS_RATE)) / OPUS_RATE
    return np.round(0.5 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def encode_opus(
    samples: npt.NDArray[np.int16], *, frame_ms: str = "20", bit_rate: int = 64_000
) -> list[bytes]:
    """``samples`` (48 kHz mono s16) as Opus packets from FFmpeg's libopus encoder,
    flushed at the end."""
    encoder = av.CodecContext.create("libopus", "w")
    assert isinstance(encoder, av.AudioCodecContext)
    encoder.sample_rate = OPUS_RATE
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = bit_rate
    encoder.time_base = fractions.Fraction(1, OPUS_RATE)
    encoder.options = {"frame_duration": frame_ms}
    encoder.open()
    size = encoder.frame_size
    packets: list[bytes] = []
    for start in range(0, len(samples) - size + 1, size):
        frame = av.AudioFrame.from_ndarray(
            samples[None, start : start + size], format="s16", layout="mono"
        )
        frame.sample_rate = OPUS_RATE
        frame.pts = start
        packets += [bytes(packet) for packet in encoder.encode(frame)]
    packets += [bytes(packet) for packet in encoder.encode(None)]
    return packets


ONSET = OPUS_RATE // 10


@pytest.fixture(scope="module")
def source() -> npt.NDArray[np.int16]:
    """100 ms of silence, then a 440 Hz tone at half scale, 1.2 s in all. The onset makes
    the codec delay the one lag that lines the two up (a bare tone repeats every period)."""
    samples = tone(1.2)
    samples[:ONSET] = 0
    return samples


@pytest.fixture(scope="module")
def packets(source: npt.NDArray[np.int16]) -> list[bytes]:
    """The tone as 20 ms libopus packets."""
    return encode_opus(source)


def decode_all(packets: Sequence[bytes]) -> npt.NDArray[np.int16]:
    decoder = OpusDecoder()
    return np.concatenate([decoder.decode(packet) for packet in packets])


def best_lag(decoded: npt.NDArray[np.int16], source: npt.NDArray[np.int16]) -> tuple[int, float]:
    """The codec delay (lag of ``decoded`` behind ``source``, 0..2000 samples) that
    correlates best, and that correlation."""
    length = len(source) - 2000
    reference = source[:length].astype(np.float64)
    best = (0, -1.0)
    for lag in range(0, 2000):
        segment = decoded[lag : lag + length].astype(np.float64)
        r = float(np.corrcoef(segment, reference)[0, 1])
        if r > best[1]:
            best = (lag, r)
    return best


def test_libopus_packets_are_20_ms(packets: list[bytes]) -> None:
    """The encoder made what was asked: 20 ms packets, enough to cover the tone."""
    assert len(packets) >= 60
    assert {packet_samples(packet) for packet in packets} == {FRAME_MS_20}


def test_decoder_output_is_packet_samples_long(packets: list[bytes]) -> None:
    """Every decoded packet is exactly ``packet_samples`` int16 samples."""
    decoder = OpusDecoder()
    for packet in packets:
        pcm = decoder.decode(packet)
        assert pcm.dtype == np.int16
        assert pcm.shape == (packet_samples(packet),)


@pytest.mark.parametrize("frame_ms", ["2.5", "10", "40", "60"])
def test_decoder_length_for_other_frame_sizes(frame_ms: str) -> None:
    """Other durations (40 and 60 ms come out as multi-frame code 1/3 packets, low rates as
    SILK or hybrid) also decode to exactly ``packet_samples`` each."""
    packets = encode_opus(tone(0.3), frame_ms=frame_ms, bit_rate=24_000)
    expected = round(float(frame_ms) * 48)
    assert {packet_samples(packet) for packet in packets} == {expected}
    decoder = OpusDecoder()
    assert [len(decoder.decode(packet)) for packet in packets] == [expected] * len(packets)


def test_decoded_tone_is_440_hz(packets: list[bytes], source: npt.NDArray[np.int16]) -> None:
    """The decoded tone's dominant frequency is 440 Hz, and after the codec delay it
    correlates >= 0.9 with what was encoded."""
    decoded = decode_all(packets)
    lag, r = best_lag(decoded, source)
    assert r >= 0.9, (lag, r)
    assert 0 < lag < 1000  # libopus's look-ahead is 6.5 ms (312 samples): small, not zero
    window = decoded[ONSET + lag : ONSET + lag + OPUS_RATE].astype(np.float64)  # 1 Hz bins
    assert len(window) == OPUS_RATE
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
    assert int(np.argmax(spectrum)) == TONE_HZ
    rms = float(np.sqrt(np.mean(window**2)))
    assert 0.25 * 32767 < rms < 0.5 * 32767  # half-scale sine: rms about 0.35


@pytest.mark.parametrize(
    "corrupt",
    [
        bytes([toc(31, 2), 0xFF, 0x00]),  # code 2: first frame longer than the packet
        bytes([toc(31, 3), 3, 0xFF]),  # code 3 CBR: 1 byte does not split into 3 frames
        bytes([toc(1, 3), 0x82, 0xFF, 0xFF]),  # code 3 VBR: frame lengths past the end
    ],
)
def test_corrupt_packet_is_silence_and_decoding_goes_on(
    packets: list[bytes], corrupt: bytes
) -> None:
    """A packet FFmpeg refuses is silence of the packet's length, not an exception, and the
    packets after it still decode to the tone."""
    decoder = OpusDecoder()
    for packet in packets[:20]:
        decoder.decode(packet)
    silence = decoder.decode(corrupt)
    assert silence.dtype == np.int16
    assert silence.shape == (packet_samples(corrupt),)
    assert not silence.any()
    after = np.concatenate([decoder.decode(packet) for packet in packets[20:40]])
    assert after.shape == (20 * FRAME_MS_20,)
    steady = after[2 * FRAME_MS_20 :].astype(np.float64)  # past the concealment
    assert float(np.sqrt(np.mean(steady**2))) > 0.2 * 32767


def test_decoder_refuses_what_is_not_opus_framing() -> None:
    """A packet ``packet_samples`` refuses (no length to give silence of) is the caller's
    ``StorageError``, as for ``Codec.frames``."""
    with pytest.raises(StorageError):
        OpusDecoder().decode(b"")


# --- storage.media.timeline with opus records -------------------------------------------

OPUS = codec("opus")


def test_opus_codec_is_a_packet_codec(packets: list[bytes]) -> None:
    """``codec('opus')`` counts a packet's samples from its TOC and refuses a non-packet."""
    assert isinstance(OPUS, Codec)
    assert OPUS.packetized
    assert OPUS.frames(packets[0]) == FRAME_MS_20
    assert OPUS.frames(bytes([toc(3, 1), 1, 2])) == MAX_SAMPLES
    with pytest.raises(StorageError):
        OPUS.frames(b"")
    with pytest.raises(StorageError):
        OPUS.frames(bytes([toc(31, 3), 0]))


def test_track_frames_with_opus_records(packets: list[bytes]) -> None:
    """A track's length is the last packet's offset plus its samples, whatever the order;
    a record that is not a packet is refused, naming its offset."""
    records = [
        TrackRecord(0, packets[0]),
        TrackRecord(960, packets[1]),
        TrackRecord(10_000, bytes([toc(3, 1), 0, 0])),  # 120 ms
        TrackRecord(5_000, packets[2]),
    ]
    assert track_frames(records, OPUS) == 10_000 + MAX_SAMPLES
    assert track_frames([], OPUS) == 0
    with pytest.raises(StorageError, match="sample 1920"):
        track_frames([*records[:2], TrackRecord(1920, b"")], OPUS)


async def records_of(records: Sequence[TrackRecord]) -> AsyncIterator[TrackRecord]:
    for record in records:
        yield record


async def render(
    left: Sequence[TrackRecord] | None, frames: int, block_frames: int
) -> npt.NDArray[np.int16]:
    chunks = [
        chunk
        async for chunk in stereo_pcm(
            None if left is None else records_of(left),
            None,
            codec=OPUS,
            frames=frames,
            block_frames=block_frames,
        )
    ]
    return np.frombuffer(b"".join(chunks), dtype="<i2").reshape(-1, 2)


@pytest.mark.parametrize("block_frames", [700, 8000, 100_000])
async def test_stereo_pcm_places_decoded_packets_at_their_offsets(
    packets: list[bytes], block_frames: int
) -> None:
    """Opus records on the left track render as the packets decoded in order, each at its
    offset, with silence in a gap between them and after the end; the right track (None)
    is silence. Block size does not matter."""
    gap = 4_800  # 100 ms of lost packets
    first, second = packets[10:20], packets[20:30]
    records = [TrackRecord(i * FRAME_MS_20, p) for i, p in enumerate(first)]
    resume = len(first) * FRAME_MS_20 + gap
    records += [TrackRecord(resume + i * FRAME_MS_20, p) for i, p in enumerate(second)]
    end = resume + len(second) * FRAME_MS_20
    frames = end + 1_000

    reference_decoder = OpusDecoder()
    expected = np.zeros(frames, dtype=np.int16)
    for record in records:
        pcm = reference_decoder.decode(record.payload)
        expected[record.offset : record.offset + len(pcm)] = pcm

    stereo = await render(records, frames, block_frames)
    assert stereo.shape == (frames, 2)
    assert np.array_equal(stereo[:, 0], expected)
    assert not stereo[:, 1].any()
    assert not stereo[len(first) * FRAME_MS_20 : resume, 0].any()  # the gap is silence
    assert not stereo[end:, 0].any()
    assert stereo[resume + 2 * FRAME_MS_20 : end, 0].any()  # the tone is back after it


async def test_stereo_pcm_opus_corrupt_record_is_silence(packets: list[bytes]) -> None:
    """A stored packet FFmpeg refuses renders as silence of its length; the packets around
    it still render."""
    corrupt = bytes([toc(31, 2), 0xFF, 0x00])  # 40 ms the decoder refuses
    records = [
        TrackRecord(0, packets[20]),
        TrackRecord(960, packets[21]),
        TrackRecord(1920, corrupt),
        TrackRecord(1920 + 1920, packets[22]),
    ]
    frames = track_frames(records, OPUS)
    assert frames == 1920 + 1920 + 960
    stereo = await render(records, frames, 1000)
    assert not stereo[1920:3840, 0].any()
    assert stereo[:1920, 0].any()
    assert stereo[3840:, 0].any()
    assert not stereo[:, 1].any()


async def test_stereo_pcm_opus_both_tracks_missing() -> None:
    """No records at all is silence of the asked length."""
    stereo = await render(None, 2_000, 512)
    assert stereo.shape == (2_000, 2)
    assert not stereo.any()
