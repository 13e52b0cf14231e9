"""Fuzz ``storage.media.tracks``: the record parser of a track's plaintext, and what reads
the records (a codec's sample count and decoding, ``track_frames``).

Input: a seed byte for where the plaintext is cut, then the plaintext. Contract: only
``StorageError`` escapes; records come out alike however the plaintext is cut; each record
is within its bounds (an offset in u64, a payload of at most ``MAX_RECORD_PAYLOAD`` bytes)
and encoding the records again gives back the bytes they came from; ``finish`` fails exactly
when a record was left incomplete; a sample codec decodes a payload to as many samples as
``frames`` says.
"""

from __future__ import annotations

from storage.errors import StorageError
from storage.media.codecs import CODECS
from storage.media.tracks import (
    MAX_RECORD_PAYLOAD,
    RecordParser,
    TrackRecord,
    encode_record,
    track_frames,
)
from tests.fuzz.harness import Reader, chunks


def parse(pieces: list[bytes]) -> tuple[list[TrackRecord], bool]:
    """The records of the plaintext fed as ``pieces``, and whether ``finish`` passed."""
    parser = RecordParser()
    records: list[TrackRecord] = []
    for piece in pieces:
        records += parser.feed(piece)
    try:
        parser.finish()
    except StorageError:
        return records, False
    return records, True


def check_codecs(records: list[TrackRecord]) -> None:
    for codec in CODECS.values():
        try:
            end = track_frames(records, codec)
        except StorageError:
            continue
        assert end >= 0
        if codec.packetized:
            continue
        for record in records:
            samples = codec.decode(record.payload)
            assert len(samples) == codec.frames(record.payload)


def fuzz_one(data: bytes) -> None:
    reader = Reader(data)
    seed = reader.u8()
    plaintext = reader.rest()
    try:
        whole, complete = parse([plaintext])
    except StorageError:
        # A record over the size limit: however it is cut, the parser refuses it too.
        try:
            parse(chunks(plaintext, seed))
        except StorageError:
            return
        raise AssertionError("a cut plaintext passed where the whole one was refused") from None
    cut, cut_complete = parse(chunks(plaintext, seed))
    assert (cut, cut_complete) == (whole, complete), "records differ cut into chunks"
    encoded = b"".join(encode_record(r.offset, r.payload) for r in whole)
    assert plaintext.startswith(encoded), "records do not re-encode to their bytes"
    assert complete == (len(encoded) == len(plaintext))
    for record in whole:
        assert 0 <= record.offset < 1 << 64 and len(record.payload) <= MAX_RECORD_PAYLOAD
    check_codecs(whole)
