"""The plaintext layout of a sealed audio track, the G.711 codecs, and stereo WAV export.

Why this module exists: every call track (inbound, outbound) is sealed as its own encrypted
streaming object, and something has to say what the *plaintext* inside it is. It is a plain
sequence of records, each a run of raw codec bytes and the sample offset where the run starts
on the call's timeline::

    record := offset:u64le  length:u32le  payload[length]

Ingest never transcodes (µ-law stays µ-law, L16 stays L16): it only stamps each run with
its offset, so pauses, packet loss and reconnects cost nothing but a jump in the offset, and
gaps are silence when the audio is rendered. Export renders both tracks into one stereo
16-bit WAV (inbound left, outbound right) streamed block by block, and the AI worker decodes
the same records.

Everything here is sans-I/O (STYLE.md §1): ``RecordParser`` is fed decrypted plaintext in
whatever pieces the object reader yields, and ``stereo_pcm`` consumes async iterators of
records without knowing where they come from. A plaintext that is not a valid track (an
absurd record length, a truncated record, a payload that is not whole samples, records out
of order) raises ``StorageError``: the object decrypted fine, so it is not a crypto failure,
but what was stored is not what the writer is supposed to store.

G.711 follows ITU-T G.711 as the classic Sun ``g711.c`` implements it: decoding through
256-entry tables, encoding through a 65536-entry table (one lookup per sample) built once at
import by a vectorised form of ``linear2ulaw`` / ``linear2alaw``.
"""

from __future__ import annotations

import asyncio
import struct
import types
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from crypto.errors import BadRequest, StorageError
from storage.media import opus

__all__ = [
    "AUDIO_KIND",
    "CODECS",
    "MAX_RECORD_PAYLOAD",
    "RECORD_HEADER",
    "Codec",
    "RecordParser",
    "TrackRecord",
    "codec",
    "encode_record",
    "mono_pcm",
    "stereo_pcm",
    "track_frames",
    "track_records",
    "wav_header",
]

AUDIO_KIND = "audio"
"""The catalog's ``objects.kind`` of a sealed audio track."""

RECORD_HEADER = struct.Struct("<QI")
"""A record's header: its offset in samples on the call timeline (u64) and its payload
length in bytes (u32), both little-endian."""

MAX_RECORD_PAYLOAD = 16 * 1024 * 1024
"""Largest payload a record may carry. Writers append a few seconds at a time, far below
this; the parser refuses anything larger so that a corrupt length cannot make it buffer
gigabytes waiting for a record that will never complete."""

_U64_LIMIT = 1 << 64

# --- records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrackRecord:
    """One run of raw codec bytes and where it starts on the call's timeline."""

    offset: int
    """Sample index on the call timeline (0 = start of the recording)."""
    payload: bytes
    """Raw codec bytes, exactly as received (never transcoded)."""


def encode_record(offset: int, payload: bytes | bytearray | memoryview) -> bytes:
    """Serialise one record (header and payload) for the track's plaintext stream.

    Raises ``ValueError`` for an offset outside u64 or a payload over
    ``MAX_RECORD_PAYLOAD``: those are bugs in the caller, not bad stored data.
    """
    if not 0 <= offset < _U64_LIMIT:
        raise ValueError(f"record offset {offset} is outside 0..2**64-1")
    data = bytes(payload)
    if len(data) > MAX_RECORD_PAYLOAD:
        raise ValueError(
            f"record payload of {len(data)} bytes is over the {MAX_RECORD_PAYLOAD}-byte limit"
        )
    return RECORD_HEADER.pack(offset, len(data)) + data


class RecordParser:
    """Fed decrypted plaintext in arbitrary pieces; returns complete records.

    Only the unparsed tail is buffered: at most one header and one payload, so memory is
    bounded by ``MAX_RECORD_PAYLOAD`` whatever the track's length. After an error the
    parser stays broken (the bad header stays at the front of its buffer).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[TrackRecord]:
        """Add plaintext; return the records it completes, in stream order."""
        buffer = self._buffer
        buffer += data
        records: list[TrackRecord] = []
        pos = 0
        header_size = RECORD_HEADER.size
        while len(buffer) - pos >= header_size:
            offset, length = RECORD_HEADER.unpack_from(buffer, pos)
            # Checked as soon as the header is complete, before waiting for the payload.
            if length > MAX_RECORD_PAYLOAD:
                raise StorageError(
                    f"track record at sample {offset} claims {length} payload bytes, over the "
                    f"{MAX_RECORD_PAYLOAD}-byte limit; the plaintext is not an audio track"
                )
            end = pos + header_size + length
            if end > len(buffer):
                break
            with memoryview(buffer) as view:
                records.append(TrackRecord(offset, bytes(view[pos + header_size : end])))
            pos = end
        # One compaction per feed, not per record, so many small records stay linear.
        del buffer[:pos]
        return records

    def finish(self) -> None:
        """Declare the plaintext complete; raise ``StorageError`` if a record was cut off."""
        if self._buffer:
            raise StorageError(
                f"track plaintext ends inside a record ({len(self._buffer)} bytes left over); "
                "the plaintext is not a complete audio track"
            )


# --- codecs ----------------------------------------------------------------------------

# Upper ends of the eight G.711 segments on the (biased) 16-bit magnitude, as in g711.c.
_SEGMENT_ENDS = np.array([0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF], np.int32)
_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635  # 32635 + bias = 32767: the biased magnitude stays within 15 bits


def _ulaw_decode_table() -> npt.NDArray[np.int16]:
    """``ulaw2linear`` for all 256 codes: the code is stored complemented; the magnitude is
    ((2 * mantissa + 33) << exponent) - 33, scaled by 4 to 16 bits."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _alaw_decode_table() -> npt.NDArray[np.int16]:
    """``alaw2linear`` for all 256 codes: even bits are inverted (XOR 0x55); segment 0 has
    no implied leading one, higher segments do."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    mantissa = (a & 0x0F) << 4
    t = np.where(seg == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _all_int16_by_bit_pattern() -> npt.NDArray[np.int32]:
    """Every int16 value, at the index of its bit pattern read as uint16 (0, 1, .., -1)."""
    return np.arange(1 << 16, dtype=np.uint16).view(np.int16).astype(np.int32)


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    """``linear2ulaw`` (Sun g711.c, bias 0x84, clip 32635) for every int16 sample.

    The magnitude of a negative sample is its negation (not its ones' complement), so -1
    encodes to 0x7F, µ-law's negative zero, which decodes to 0.
    """
    x = _all_int16_by_bit_pattern()
    mask = np.where(x < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(x), _ULAW_CLIP) + _ULAW_BIAS
    seg = np.searchsorted(_SEGMENT_ENDS, magnitude).astype(np.int32)  # 0..7 after the clip
    code = (seg << 4) | ((magnitude >> (seg + 3)) & 0x0F)
    return (code ^ mask).astype(np.uint8)


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    """``linear2alaw`` for every int16 sample.

    The magnitude of a negative sample is its ones' complement (-x - 1), as in the ITU-T
    G.191 reference and the later Sun g711.c; the early Sun version's ``-x - 8`` turns
    -1..-7 into a negative shift and encodes them as -248. -32768 maps to 32767 and so
    needs no clip.
    """
    x = _all_int16_by_bit_pattern()
    negative = x < 0
    mask = np.where(negative, 0x55, 0xD5)
    magnitude = np.where(negative, ~x, x)
    seg = np.searchsorted(_SEGMENT_ENDS, magnitude).astype(np.int32)  # 0..7
    # Segments 0 and 1 share a step of 16; each later segment doubles it.
    mantissa = np.where(seg < 2, magnitude >> 4, magnitude >> (seg + 3)) & 0x0F
    return (((seg << 4) | mantissa) ^ mask).astype(np.uint8)


def _as_int16(samples: npt.NDArray[Any]) -> npt.NDArray[np.int16]:
    """The samples as an int16 array; anything else is refused rather than silently wrapped."""
    array = np.asarray(samples)
    if array.dtype != np.int16:
        raise TypeError(f"samples must be an int16 array, not {array.dtype}")
    return array


@dataclass(frozen=True, slots=True)
class Codec:
    """A raw audio encoding a track may hold.

    Sample codecs decode to and encode from int16 samples a slice at a time: G.711 codecs
    carry their lookup tables; L16 (``bytes_per_sample`` 2, little-endian) has none and is a
    byte-order-aware reinterpretation. A packet codec (Opus) keeps one packet per record,
    knows each packet's length from its header, and is decoded a whole packet at a time by a
    stateful decoder (``storage.opus``); ``decode`` and ``encode`` are not for it.
    """

    name: str
    """``"pcmu"`` (G.711 µ-law), ``"pcma"`` (G.711 A-law), ``"l16"`` (16-bit linear) or
    ``"opus"``."""
    bytes_per_sample: int
    """Bytes per sample: 1 for G.711, 2 for L16; 0 for a packet codec."""
    _decode_table: npt.NDArray[np.int16] | None = field(default=None, repr=False, compare=False)
    _encode_table: npt.NDArray[np.uint8] | None = field(default=None, repr=False, compare=False)

    @property
    def packetized(self) -> bool:
        """Whether payloads are whole packets (one per record) rather than runs of samples."""
        return self.bytes_per_sample == 0

    def frames(self, payload: bytes | bytearray | memoryview) -> int:
        """How many samples ``payload`` covers; ``StorageError`` if it cannot be this codec's
        (not whole samples; not an Opus packet)."""
        if self.packetized:
            return opus.packet_samples(payload)
        if len(payload) % self.bytes_per_sample:
            raise StorageError(
                f"a {self.name} payload of {len(payload)} bytes is not a whole number of "
                f"{self.bytes_per_sample}-byte samples"
            )
        return len(payload) // self.bytes_per_sample

    def decode(self, payload: bytes | bytearray | memoryview) -> npt.NDArray[np.int16]:
        """Decode raw codec bytes to int16 samples (a fresh, writable array).

        Raises ``StorageError`` if the payload is not a whole number of samples.
        """
        if len(payload) % self.bytes_per_sample:
            raise StorageError(
                f"a {self.name} payload of {len(payload)} bytes is not a whole number of "
                f"{self.bytes_per_sample}-byte samples; the plaintext is not an audio track"
            )
        if self._decode_table is None:
            # astype copies into native byte order, so the result never aliases the payload.
            return np.frombuffer(payload, dtype="<i2").astype(np.int16)
        return self._decode_table[np.frombuffer(payload, dtype=np.uint8)]

    def encode(self, samples: npt.NDArray[np.int16]) -> bytes:
        """Encode int16 samples to raw codec bytes (``TypeError`` for another dtype)."""
        array = _as_int16(samples)
        if self._encode_table is None:
            return array.astype("<i2", copy=False).tobytes()
        # Index the table by each sample's bit pattern: one gather, no arithmetic.
        return self._encode_table[array.view(np.uint16)].tobytes()


CODECS: Mapping[str, Codec] = types.MappingProxyType(
    {
        "pcmu": Codec("pcmu", 1, _ulaw_decode_table(), _ulaw_encode_table()),
        "pcma": Codec("pcma", 1, _alaw_decode_table(), _alaw_encode_table()),
        "l16": Codec("l16", 2),
        "opus": Codec("opus", 0),
    }
)
"""Every codec a track may hold, by name."""


def codec(name: str) -> Codec:
    """The codec called ``name``; ``BadRequest`` (code ``unsupported_codec``) if none is."""
    try:
        return CODECS[name]
    except KeyError:
        raise BadRequest(
            f"unsupported codec {name!r}; supported: {', '.join(sorted(CODECS))}",
            code="unsupported_codec",
        ) from None


# --- export ----------------------------------------------------------------------------

_WAV_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_U32_MAX = 0xFFFF_FFFF


def wav_header(*, channels: int, sample_rate: int, frames: int) -> bytes:
    """The 44-byte RIFF/WAVE header of a 16-bit PCM file with ``frames`` frames.

    The sizes are known up front (the catalog knows each track's length), so the header can
    be sent before the audio is rendered. Raises ``ValueError`` for arguments a plain RIFF
    header cannot express (a data chunk of 4 GiB or more needs RF64).
    """
    if not 1 <= channels <= 0xFFFF:
        raise ValueError(f"channels must be 1..65535, not {channels}")
    block_align = channels * 2
    byte_rate = sample_rate * block_align
    if sample_rate < 1 or byte_rate > _U32_MAX or block_align > 0xFFFF:
        raise ValueError(f"sample rate {sample_rate} with {channels} channels does not fit WAV")
    if frames < 0:
        raise ValueError(f"frames must not be negative, not {frames}")
    data_size = frames * block_align
    # The RIFF size counts everything after its own field: "WAVE", the fmt chunk, data.
    riff_size = _WAV_HEADER.size - 8 + data_size
    if riff_size > _U32_MAX:
        raise ValueError(f"{frames} frames of {channels} channels is over WAV's 4 GiB limit")
    return _WAV_HEADER.pack(
        b"RIFF",
        riff_size,
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size for plain PCM
        1,  # WAVE_FORMAT_PCM
        channels,
        sample_rate,
        byte_rate,
        block_align,
        16,  # bits per sample
        b"data",
        data_size,
    )


@dataclass(frozen=True, slots=True)
class _HeldRecord:
    """A record the cursor still needs, with its extent on the timeline precomputed."""

    start: int
    end: int
    payload: bytes
    """Codec bytes; for a packet codec, the packet until it is decoded to L16."""
    decoded: bool = True


_L16 = Codec("l16", 2)


class _TrackCursor:
    """Renders one track block by block, in timeline order.

    It pulls records only until it holds one starting at or past the block's end (the one
    record of look-ahead that proves nothing else touches the block, given the writer's
    increasing offsets), and forgets each record once the timeline has passed its end. So
    it holds the records overlapping the current block plus that one, never the track.
    Sample codecs are decoded per block, a payload slice at a time; packets (Opus) are
    decoded whole as they are pulled, in pull order, by one stateful decoder in a worker
    thread (FFmpeg blocks), and held as L16.
    """

    def __init__(self, records: AsyncIterator[TrackRecord] | None, codec: Codec) -> None:
        self._records = records
        self._exhausted = False
        self._codec = codec
        self._held: list[_HeldRecord] = []
        self._last_offset = 0
        self._decoder = opus.OpusDecoder() if codec.packetized else None

    async def _pull_until(self, stop: int) -> None:
        """Pull records until one starts at or after ``stop`` or the track ends."""
        records = self._records
        while records is not None and not self._exhausted:
            if self._held and self._held[-1].start >= stop:
                break
            try:
                record = await anext(records)
            except StopAsyncIteration:
                # The iterator is kept (not dropped) so that aclose() still reaches it.
                self._exhausted = True
                break
            if record.offset < self._last_offset:
                raise StorageError(
                    f"track record at sample {record.offset} follows one at sample "
                    f"{self._last_offset}; records must come in increasing offset order"
                )
            self._last_offset = record.offset
            try:
                end = record.offset + self._codec.frames(record.payload)
            except StorageError as e:
                raise StorageError(f"track record at sample {record.offset}: {e.message}") from e
            packet = self._decoder is not None
            self._held.append(_HeldRecord(record.offset, end, record.payload, not packet))
        if self._decoder is not None and any(not held.decoded for held in self._held):
            self._held = await asyncio.to_thread(_decode_packets, self._decoder, self._held)

    async def render(self, start: int, stop: int) -> npt.NDArray[np.int16]:
        """The track's samples for timeline ``[start, stop)``; silence where no record is."""
        await self._pull_until(stop)
        out = np.zeros(stop - start, dtype=np.int16)
        codec = _L16 if self._decoder is not None else self._codec
        width = codec.bytes_per_sample
        # Held records are in arrival order, so a later record overwrites an earlier one
        # wherever they overlap: "the later one wins".
        for held in self._held:
            lo = max(start, held.start)
            hi = min(stop, held.end)
            if lo < hi:
                with memoryview(held.payload) as view:
                    chunk = view[(lo - held.start) * width : (hi - held.start) * width]
                    out[lo - start : hi - start] = codec.decode(chunk)
        self._held = [held for held in self._held if held.end > stop]
        return out

    async def aclose(self) -> None:
        """Close the record iterator if it can be closed (async generators can)."""
        records, self._records = self._records, None
        close = getattr(records, "aclose", None)
        if close is not None:
            await close()


def _decode_packets(decoder: opus.OpusDecoder, held: list[_HeldRecord]) -> list[_HeldRecord]:
    """``held`` with every packet not yet decoded replaced by its L16 samples."""
    return [
        item
        if item.decoded
        else _HeldRecord(item.start, item.end, decoder.decode(item.payload).astype("<i2").tobytes())
        for item in held
    ]


async def stereo_pcm(
    left: AsyncIterator[TrackRecord] | None,
    right: AsyncIterator[TrackRecord] | None,
    *,
    codec: Codec,
    frames: int,
    block_frames: int = 8000,
) -> AsyncIterator[bytes]:
    """Interleaved little-endian int16 stereo for timeline [0, frames).

    Each record's samples are placed at its offset, silence where no record covers, samples
    at or past ``frames`` dropped. Yields blocks of at most ``block_frames * 4`` bytes,
    ``frames * 4`` bytes in all. Memory: holds only the records overlapping the current
    block (plus one of look-ahead per track), never a whole track. A missing track (None)
    is silence. Records must arrive in non-decreasing offset order (the writer guarantees
    it; a record that goes back raises ``StorageError``); where one overlaps an earlier
    one, the later one wins.

    The iterators are consumed only as far as ``frames`` needs and are closed (``aclose``,
    where they have one) when this generator finishes or is closed: it owns them.
    """
    if frames < 0:
        raise ValueError(f"frames must not be negative, not {frames}")
    if block_frames < 1:
        raise ValueError(f"block_frames must be positive, not {block_frames}")
    tracks = (_TrackCursor(left, codec), _TrackCursor(right, codec))
    try:
        for start in range(0, frames, block_frames):
            stop = min(start + block_frames, frames)
            block = np.empty((stop - start, 2), dtype="<i2")
            block[:, 0] = await tracks[0].render(start, stop)
            block[:, 1] = await tracks[1].render(start, stop)
            yield block.tobytes()
    finally:
        for track in tracks:
            await track.aclose()


async def track_records(streams: Iterable[AsyncIterator[bytes]]) -> AsyncIterator[TrackRecord]:
    """One track's records across its objects' plaintext streams, in order (a track gets a
    new object after a restart or a failed spool write)."""
    for stream in streams:
        parser = RecordParser()
        async for chunk in stream:
            for record in parser.feed(chunk):
                yield record
        parser.finish()


async def mono_pcm(
    records: AsyncIterator[TrackRecord] | None,
    *,
    codec: Codec,
    frames: int,
    block_frames: int = 8000,
) -> AsyncIterator[npt.NDArray[np.int16]]:
    """One track's int16 samples for timeline [0, frames), in blocks of at most
    ``block_frames``: ``stereo_pcm``'s rendering (offsets, silence in gaps, the later record
    winning an overlap) for one track, as the AI worker reads it. It owns ``records``."""
    if frames < 0:
        raise ValueError(f"frames must not be negative, not {frames}")
    if block_frames < 1:
        raise ValueError(f"block_frames must be positive, not {block_frames}")
    track = _TrackCursor(records, codec)
    try:
        for start in range(0, frames, block_frames):
            yield await track.render(start, min(start + block_frames, frames))
    finally:
        await track.aclose()


def track_frames(records: Iterable[TrackRecord], codec: Codec) -> int:
    """End of the last record in samples (max offset + its samples); 0 if none.

    Raises ``StorageError`` for a payload that is not this codec's (see ``Codec.frames``).
    """
    end = 0
    for record in records:
        try:
            end = max(end, record.offset + codec.frames(record.payload))
        except StorageError as e:
            raise StorageError(f"track record at sample {record.offset}: {e.message}") from e
    return end
