"""The plaintext layout of a sealed audio track: runs of raw codec bytes, each stamped with
its sample offset on the call's timeline.

Why this module exists: every call track (inbound, outbound) is sealed as its own encrypted
streaming object, and something has to say what the *plaintext* inside it is. It is a plain
sequence of records, each a run of raw codec bytes and the sample offset where the run starts
on the call's timeline::

    record := offset:u64le  length:u32le  payload[length]

Ingest never transcodes (µ-law stays µ-law, L16 stays L16): it only stamps each run with
its offset, so pauses, packet loss and reconnects cost nothing but a jump in the offset, and
gaps are silence when the audio is rendered (``storage.media.timeline``: export renders both
tracks into one stereo 16-bit WAV, inbound left, outbound right; the AI worker decodes the
same records).

Everything here is sans-I/O (STYLE.md §1): ``RecordParser`` is fed decrypted plaintext in
whatever pieces the object reader yields. A plaintext that is not a valid track (an absurd
record length, a truncated record, a payload that is not whole samples) raises
``StorageError``: the object decrypted fine, so it is not a crypto failure, but what was
stored is not what the writer is supposed to store.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from storage.errors import StorageError
from storage.media.codecs import Codec

__all__ = [
    "AUDIO_KIND",
    "MAX_RECORD_PAYLOAD",
    "RECORD_HEADER",
    "RecordParser",
    "TrackRecord",
    "encode_record",
    "track_frames",
    "track_records",
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


async def track_records(streams: Iterable[AsyncIterator[bytes]]) -> AsyncIterator[TrackRecord]:
    """One track's records across its objects' plaintext streams, in order (a track gets a
    new object after a restart or a failed spool write)."""
    for stream in streams:
        parser = RecordParser()
        async for chunk in stream:
            for record in parser.feed(chunk):
                yield record
        parser.finish()


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
