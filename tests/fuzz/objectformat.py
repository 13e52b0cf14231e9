"""Fuzz ``crypto.objectformat``: the header parser and the streaming reader on raw bytes,
and the writer and reader together on objects sealed from the input.

Input: a mode byte. Mode even: the rest is a sealed object as read from a store, opened
with a fixed key, cut into chunks by a seed byte. Contract: only ``DecryptionFailed``
escapes; a header that parses re-serialises to the bytes it came from and is within the
format's size bounds; no segment's plaintext exceeds the segment size; the cut stream and
the whole stream open alike (or both fail).

Mode odd: the rest drives a writer (segment size, plaintext, where it flushes), and the
sealed object is opened cut into chunks. Contract: it opens to the plaintext; any one byte
changed, or the object truncated anywhere, fails with ``DecryptionFailed``; the salvage of a
truncated object releases a prefix of the plaintext, and a writer resumed after it (the
spool's crash recovery) completes an object that opens to that prefix and the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from crypto.errors import DecryptionFailed
from crypto.objectformat import (
    MAX_HEADER_SIZE,
    MIN_HEADER_SIZE,
    ObjectReader,
    ObjectWriter,
    open_sealed,
    parse_header,
)
from tests.fuzz.harness import Reader, chunks

DEK = hashlib.sha256(b"callvault fuzz dek").digest()
TENANT = "acme"
OBJECT_ID = "obj-fuzz"
KEK_ID = "kek-fuzz"


def fixed_random() -> Callable[[int], bytes]:
    """The writer's salt and nonce prefix, the same on every run (seeds stay valid)."""
    return lambda size: hashlib.sha256(b"salt").digest()[:size]


def writer(segment_size: int) -> ObjectWriter:
    return ObjectWriter(
        dek=DEK,
        tenant=TENANT,
        object_id=OBJECT_ID,
        kek_id=KEK_ID,
        kek_version=1,
        segment_size=segment_size,
        random=fixed_random(),
    )


def open_chunks(pieces: list[bytes], *, salvage: bool = False) -> tuple[bytes, ObjectReader]:
    """The plaintext of the object fed as ``pieces``; checks each segment's size."""
    reader = ObjectReader(dek=DEK, tenant=TENANT, object_id=OBJECT_ID)
    out: list[bytes] = []
    for piece in pieces:
        out += reader.feed(piece)
    out += reader.salvage() if salvage else reader.finish()
    header = reader.header  # None: salvaged before the header was complete
    size = 0 if header is None else header.segment_size
    assert all(len(segment) <= size for segment in out), "a segment over the segment size"
    return b"".join(out), reader


def check_header(data: bytes) -> None:
    try:
        parsed = parse_header(data)
    except DecryptionFailed:
        return
    if parsed is None:
        assert len(data) < MAX_HEADER_SIZE
        return
    header, length = parsed
    assert MIN_HEADER_SIZE <= length <= MAX_HEADER_SIZE
    assert header.to_bytes() == data[:length], "a parsed header does not re-serialise alike"


def opened(pieces: list[bytes], salvage: bool) -> bytes | None:
    try:
        plaintext, reader = open_chunks(pieces, salvage=salvage)
    except DecryptionFailed:
        return None
    assert reader.verified_bytes <= sum(map(len, pieces))
    return plaintext


def fuzz_raw(reader: Reader) -> None:
    seed, salvage = reader.u8(), bool(reader.u8() & 1)
    data = reader.rest()
    check_header(data)
    whole = opened([data], salvage)
    cut = opened(chunks(data, seed), salvage)
    assert whole == cut, "the object opens differently cut into chunks"


def fuzz_sealed(reader: Reader) -> None:
    segment_size = 16 + reader.u8()
    seed = reader.u8()
    flip = reader.u16()
    flushes = {reader.u16() % 512 for _ in range(reader.u8() % 8)}
    plaintext = reader.take(reader.u16() % 2048)
    sealing = writer(segment_size)
    sealed = bytearray()
    for pos in range(0, len(plaintext), 64):
        sealed += sealing.write(plaintext[pos : pos + 64])
        if pos // 64 in flushes:
            sealed += sealing.flush()
    sealed += sealing.close()
    sealed_bytes = bytes(sealed)
    assert open_chunks(chunks(sealed_bytes, seed))[0] == plaintext

    changed = bytearray(sealed_bytes)
    changed[flip % len(changed)] ^= 1 << (flip >> 13)
    try:
        open_sealed(bytes(changed), dek=DEK, tenant=TENANT, object_id=OBJECT_ID)
    except DecryptionFailed:
        pass
    else:
        raise AssertionError(f"the object opened with byte {flip % len(changed)} changed")

    cut = flip % len(sealed_bytes)
    truncated = sealed_bytes[:cut]
    try:
        open_sealed(truncated, dek=DEK, tenant=TENANT, object_id=OBJECT_ID)
    except DecryptionFailed:
        pass
    else:
        raise AssertionError(f"the object opened truncated to {cut} bytes")
    check_resume(truncated, plaintext, seed)


def check_resume(truncated: bytes, plaintext: bytes, seed: int) -> None:
    """Salvage what a crash left, resume the writer after it, and open the result."""
    salvaging = ObjectReader(dek=DEK, tenant=TENANT, object_id=OBJECT_ID)
    prefix = b""
    for piece in chunks(truncated, seed):
        prefix += b"".join(salvaging.feed(piece))
    prefix += b"".join(salvaging.salvage())
    assert plaintext.startswith(prefix), "salvage released what was never written"
    header = salvaging.header
    if header is None or salvaging.complete:
        return
    resumed = ObjectWriter.resume(dek=DEK, header=header, segments=salvaging.segments_opened)
    rest = plaintext[len(prefix) :]
    whole = truncated[: salvaging.verified_bytes] + resumed.write(rest) + resumed.close()
    assert open_sealed(whole, dek=DEK, tenant=TENANT, object_id=OBJECT_ID) == plaintext


def fuzz_one(data: bytes) -> None:
    reader = Reader(data)
    if reader.u8() & 1:
        fuzz_sealed(reader)
    else:
        fuzz_raw(reader)
