"""The object format holds: old objects still open, and every kind of tampering fails with
the format's own ``DecryptionFailed`` without releasing plaintext of the bad segment."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import DecryptionFailed
from crypto.objectformat import (
    SEGMENT_PREFIX_SIZE,
    TAG_SIZE,
    ObjectReader,
    ObjectWriter,
    generate_dek,
    open_sealed,
    parse_header,
    seal,
    unwrap_key,
)

VECTORS = json.loads(
    (Path(__file__).parent.parent / "data" / "objectformat_v1_vectors.json").read_text()
)


def deterministic_random(seed: str) -> Callable[[int], bytes]:
    """The random source the vectors were generated with (see the JSON's description)."""
    state = hashlib.sha256(seed.encode()).digest()

    def random(n: int) -> bytes:
        nonlocal state
        out = b""
        while len(out) < n:
            state = hashlib.sha256(state).digest()
            out += state
        return out[:n]

    return random


def seal_with_flushes(
    plaintext: bytes,
    flush_at: Sequence[int],
    *,
    dek: bytes,
    tenant: str = "acme",
    object_id: str = "obj-1",
    segment_size: int = 32,
    random: Callable[[int], bytes] | None = None,
    kek_id: str = "kek-test",
    kek_version: int = 1,
) -> bytes:
    kwargs = {} if random is None else {"random": random}
    writer = ObjectWriter(
        dek=dek,
        tenant=tenant,
        object_id=object_id,
        kek_id=kek_id,
        kek_version=kek_version,
        segment_size=segment_size,
        **kwargs,
    )
    out = bytearray()
    pos = 0
    for cut in flush_at:
        out += writer.write(plaintext[pos:cut])
        out += writer.flush()
        pos = cut
    out += writer.write(plaintext[pos:])
    out += writer.close()
    return bytes(out)


def segment_spans(sealed: bytes) -> list[tuple[int, int]]:
    """(start, end) of every segment record in a sealed object."""
    parsed = parse_header(sealed)
    assert parsed is not None
    pos = parsed[1]
    spans = []
    while pos < len(sealed):
        (length,) = struct.unpack_from(">I", sealed, pos)
        end = pos + SEGMENT_PREFIX_SIZE + length + TAG_SIZE
        spans.append((pos, end))
        pos = end
    return spans


def stream_open(sealed: bytes, *, dek: bytes, chunk: int = 7, **ids: str) -> list[bytes]:
    """Open by feeding small chunks, collecting every released plaintext piece; on failure
    the exception carries what had been released so far as ``released``."""
    reader = ObjectReader(
        dek=dek, tenant=ids.get("tenant", "acme"), object_id=ids.get("object_id", "obj-1")
    )
    released: list[bytes] = []
    try:
        for i in range(0, len(sealed), chunk):
            released += reader.feed(sealed[i : i + chunk])
        released += reader.finish()
    except DecryptionFailed as e:
        e.released = released  # type: ignore[attr-defined]
        raise
    return released


# --- known answers ------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_known_answer_vectors_seal_and_open(case: dict[str, object]) -> None:
    dek = bytes.fromhex(str(case["dek"]))
    plaintext = bytes.fromhex(str(case["plaintext"]))
    sealed = bytes.fromhex(str(case["sealed"]))
    ids = {"tenant": str(case["tenant"]), "object_id": str(case["object_id"])}
    assert open_sealed(sealed, dek=dek, **ids) == plaintext
    assert b"".join(stream_open(sealed, dek=dek, **ids)) == plaintext
    flush_at = case["flush_at"]
    assert isinstance(flush_at, list)
    resealed = seal_with_flushes(
        plaintext,
        flush_at,
        dek=dek,
        segment_size=int(str(case["segment_size"])),
        random=deterministic_random(str(case["random_seed"])),
        kek_id=str(case["kek_id"]),
        kek_version=int(str(case["kek_version"])),
        **ids,
    )
    assert resealed == sealed


def test_known_answer_key_wrap() -> None:
    for case in VECTORS["key_wrap"]:
        key = unwrap_key(
            bytes.fromhex(case["kek"]),
            bytes.fromhex(case["wrapped"]),
            context=case["context"].encode(),
        )
        assert key == bytes.fromhex(case["key"])


# --- tampering ----------------------------------------------------------------------------

DEK = bytes(range(32))
PLAINTEXT = bytes(range(80))  # 3 segments of 32 + a short last one with segment_size=32


@pytest.fixture(scope="module")
def small_object() -> bytes:
    return seal_with_flushes(PLAINTEXT, [], dek=DEK)


def test_small_object_round_trips(small_object: bytes) -> None:
    assert len(segment_spans(small_object)) == 3
    assert open_sealed(small_object, dek=DEK, tenant="acme", object_id="obj-1") == PLAINTEXT


def test_every_single_bit_flip_fails(small_object: bytes) -> None:
    spans = segment_spans(small_object)
    for bit in range(len(small_object) * 8):
        tampered = bytearray(small_object)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(DecryptionFailed) as failed:
            stream_open(bytes(tampered), dek=DEK)
        # Only segments wholly before the flipped byte may have been released.
        intact = sum(1 for _, end in spans if end <= bit // 8)
        released = b"".join(failed.value.released)  # type: ignore[attr-defined]
        assert PLAINTEXT.startswith(released)
        assert len(released) <= 32 * intact
        with pytest.raises(DecryptionFailed):
            open_sealed(bytes(tampered), dek=DEK, tenant="acme", object_id="obj-1")


def test_truncation_at_every_byte_and_every_segment_boundary_fails(small_object: bytes) -> None:
    boundaries = {start for start, _ in segment_spans(small_object)}
    for cut in range(len(small_object)):
        with pytest.raises(DecryptionFailed) as failed:
            open_sealed(small_object[:cut], dek=DEK, tenant="acme", object_id="obj-1")
        if cut in boundaries:
            assert "truncated" in str(failed.value)


def test_truncated_stream_names_the_missing_segment(small_object: bytes) -> None:
    spans = segment_spans(small_object)
    cut = spans[2][0]  # drop the last segment: segments 0 and 1 verify, 2 is missing
    with pytest.raises(DecryptionFailed) as failed:
        stream_open(small_object[:cut], dek=DEK)
    # Segment 1 is now the final record but was sealed without the last flag.
    assert failed.value.segment == 1
    assert b"".join(failed.value.released) == PLAINTEXT[:32]  # type: ignore[attr-defined]


def test_appending_data_after_the_last_segment_fails(small_object: bytes) -> None:
    # The trailing byte makes the real last segment look like a middle one: its nonce no
    # longer matches the one it was sealed with.
    with pytest.raises(DecryptionFailed) as failed:
        open_sealed(small_object + b"\0", dek=DEK, tenant="acme", object_id="obj-1")
    assert failed.value.segment == 2
    extra = seal_with_flushes(b"more", [], dek=DEK)
    with pytest.raises(DecryptionFailed):
        open_sealed(
            small_object + extra[segment_spans(extra)[0][0] :],
            dek=DEK,
            tenant="acme",
            object_id="obj-1",
        )


def test_reordered_segments_fail(small_object: bytes) -> None:
    (a0, a1), (b0, b1), _ = segment_spans(small_object)
    swapped = small_object[:a0] + small_object[b0:b1] + small_object[a0:a1] + small_object[b1:]
    with pytest.raises(DecryptionFailed) as failed:
        stream_open(swapped, dek=DEK)
    assert failed.value.segment == 0
    assert failed.value.released == []  # type: ignore[attr-defined]


def test_segment_spliced_from_another_object_fails(small_object: bytes) -> None:
    # Same DEK, tenant and object id: only the salt and nonce prefix differ.
    other = seal_with_flushes(bytes(80), [], dek=DEK)
    (s0, s1) = segment_spans(small_object)[1]
    (o0, o1) = segment_spans(other)[1]
    spliced = small_object[:s0] + other[o0:o1] + small_object[s1:]
    with pytest.raises(DecryptionFailed) as failed:
        stream_open(spliced, dek=DEK)
    assert failed.value.segment == 1
    assert b"".join(failed.value.released) == PLAINTEXT[:32]  # type: ignore[attr-defined]


def test_header_of_another_object_fails(small_object: bytes) -> None:
    other = seal_with_flushes(PLAINTEXT, [], dek=DEK)
    header_end = segment_spans(small_object)[0][0]
    with pytest.raises(DecryptionFailed) as failed:
        stream_open(other[:header_end] + small_object[header_end:], dek=DEK)
    assert failed.value.segment == 0


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ({"tenant": "globex", "object_id": "obj-1"}, "another tenant"),
        ({"tenant": "acme", "object_id": "obj-2"}, "another object id"),
    ],
)
def test_wrong_tenant_or_object_id_fails(
    small_object: bytes, ids: dict[str, str], message: str
) -> None:
    with pytest.raises(DecryptionFailed, match=message) as failed:
        stream_open(small_object, dek=DEK, **ids)
    assert failed.value.segment is None
    assert failed.value.released == []  # type: ignore[attr-defined]


def test_wrong_key_fails_at_the_commitment(small_object: bytes) -> None:
    with pytest.raises(DecryptionFailed, match="commitment") as failed:
        stream_open(small_object, dek=generate_dek())
    assert failed.value.segment is None


def test_object_renamed_in_its_header_fails(small_object: bytes) -> None:
    """An attacker who rewrites the header's object id (keeping lengths) to match another
    object's name is caught by the commitment, since the keys are derived over the header."""
    forged = small_object.replace(b"obj-1", b"obj-2", 1)
    with pytest.raises(DecryptionFailed, match="commitment"):
        stream_open(forged, dek=DEK, object_id="obj-2")


def test_reader_refuses_further_use_after_a_failure(small_object: bytes) -> None:
    reader = ObjectReader(dek=DEK, tenant="acme", object_id="obj-1")
    tampered = bytearray(small_object)
    tampered[segment_spans(small_object)[0][0] + 5] ^= 1
    with pytest.raises(DecryptionFailed):
        reader.feed(bytes(tampered))
    with pytest.raises(DecryptionFailed, match="already failed"):
        reader.feed(small_object)


def test_verify_all_releases_nothing_before_the_end(small_object: bytes) -> None:
    reader = ObjectReader(dek=DEK, tenant="acme", object_id="obj-1", verify_all=True)
    assert reader.feed(small_object) == []
    assert b"".join(reader.finish()) == PLAINTEXT
    truncated = small_object[: segment_spans(small_object)[2][0]]
    reader = ObjectReader(dek=DEK, tenant="acme", object_id="obj-1", verify_all=True)
    assert reader.feed(truncated) == []
    with pytest.raises(DecryptionFailed):
        reader.finish()


def test_oversized_segment_length_is_refused_before_reading_it(small_object: bytes) -> None:
    start = segment_spans(small_object)[0][0]
    forged = small_object[:start] + struct.pack(">I", 2**31) + small_object[start + 4 :]
    with pytest.raises(DecryptionFailed, match="exceeds the segment size"):
        open_sealed(forged, dek=DEK, tenant="acme", object_id="obj-1")


# --- the writer ---------------------------------------------------------------------------


def test_writer_holds_at_most_one_segment() -> None:
    writer = ObjectWriter(
        dek=DEK, tenant="acme", object_id="obj-1", kek_id="k", kek_version=1, segment_size=64
    )
    sealed = bytearray()
    for _ in range(100):
        sealed += writer.write(b"x" * 50)
        assert writer.plaintext_bytes - writer.segments_sealed * 64 < 64
    sealed += writer.close()
    assert open_sealed(bytes(sealed), dek=DEK, tenant="acme", object_id="obj-1") == b"x" * 5000


def test_flush_seals_buffered_audio_and_empty_flush_emits_nothing() -> None:
    writer = ObjectWriter(
        dek=DEK, tenant="acme", object_id="obj-1", kek_id="k", kek_version=1, segment_size=64
    )
    first = writer.write(b"abc")
    assert first == writer.header.to_bytes()  # header goes out at once, audio waits
    flushed = writer.flush()
    assert len(flushed) == SEGMENT_PREFIX_SIZE + 3 + TAG_SIZE
    assert writer.flush() == b""
    closing = writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"late")
    sealed = bytes(first + flushed + closing)
    assert open_sealed(sealed, dek=DEK, tenant="acme", object_id="obj-1") == b"abc"


def test_every_object_gets_fresh_salt_and_nonce_prefix() -> None:
    a = seal(b"same", dek=DEK, tenant="acme", object_id="obj-1", kek_id="k", kek_version=1)
    b = seal(b"same", dek=DEK, tenant="acme", object_id="obj-1", kek_id="k", kek_version=1)
    assert a != b
    header_a, header_b = parse_header(a), parse_header(b)
    assert header_a is not None and header_b is not None
    assert header_a[0].salt != header_b[0].salt
    assert header_a[0].nonce_prefix != header_b[0].nonce_prefix


def test_plaintext_does_not_appear_in_the_sealed_object() -> None:
    plaintext = b"card number 4111 1111 1111 1111 " * 100
    sealed = seal(plaintext, dek=DEK, tenant="acme", object_id="obj-1", kek_id="k", kek_version=1)
    for i in range(0, len(plaintext) - 16, 16):
        assert plaintext[i : i + 16] not in sealed


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    plaintext=st.binary(max_size=3000),
    segment_size=st.integers(min_value=16, max_value=700),
    flush_points=st.lists(st.integers(min_value=0, max_value=3000), max_size=8),
    feed_size=st.integers(min_value=1, max_value=4000),
)
def test_round_trip_over_sizes_segment_sizes_and_flushes(
    plaintext: bytes, segment_size: int, flush_points: list[int], feed_size: int
) -> None:
    flush_at = sorted({min(p, len(plaintext)) for p in flush_points})
    sealed = seal_with_flushes(plaintext, flush_at, dek=DEK, segment_size=segment_size)
    assert b"".join(stream_open(sealed, dek=DEK, chunk=feed_size)) == plaintext
    assert open_sealed(sealed, dek=DEK, tenant="acme", object_id="obj-1") == plaintext


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=400))
def test_header_parser_fuzz_raises_only_decryption_failed(data: bytes) -> None:
    try:
        parse_header(data)
    except DecryptionFailed:
        pass


@settings(max_examples=300, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=200),
    replacement=st.binary(min_size=1, max_size=8),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_mutated_objects_raise_only_decryption_failed(
    position: int, replacement: bytes, chunk: int
) -> None:
    sealed = seal_with_flushes(PLAINTEXT, [10], dek=DEK)
    position %= len(sealed)
    mutated = sealed[:position] + replacement + sealed[position + len(replacement) :]
    if mutated == sealed:
        return
    with pytest.raises(DecryptionFailed):
        stream_open(mutated, dek=DEK, chunk=chunk)


# --- recovery of an object whose writer died (the spool after a crash) ---------------------


def crashed_object(flushes: int = 3) -> tuple[bytes, bytes]:
    """Sealed bytes of an object whose writer flushed ``flushes`` times and then died (never
    closed), and the plaintext those flushes made durable."""
    writer = ObjectWriter(
        dek=DEK, tenant="acme", object_id="obj1", kek_id="k", kek_version=1, segment_size=32
    )
    sealed, durable = bytearray(), bytearray()
    for index in range(flushes):
        chunk = bytes([index]) * (20 + 17 * index)  # crosses segment boundaries
        sealed += writer.write(chunk)
        sealed += writer.flush()
        durable += chunk
    assert not writer.write(b"written, never flushed")  # buffered in the writer: lost
    return bytes(sealed), bytes(durable)


def salvage(data: bytes, *, chunk: int = 11) -> tuple[ObjectReader, bytes]:
    reader = ObjectReader(dek=DEK, tenant="acme", object_id="obj1")
    out = bytearray()
    for start in range(0, len(data), chunk):
        out += b"".join(reader.feed(data[start : start + chunk]))
    out += b"".join(reader.salvage())
    return reader, bytes(out)


def test_salvage_opens_every_flushed_segment_of_an_unclosed_object() -> None:
    sealed, durable = crashed_object()
    reader, plaintext = salvage(sealed)
    assert plaintext == durable
    assert not reader.complete
    assert reader.verified_bytes == len(sealed)
    with pytest.raises(DecryptionFailed, match="truncated"):
        stream_open(sealed, dek=DEK, tenant="acme", object_id="obj1")  # finish() refuses it


def test_salvage_drops_a_torn_last_write_at_every_cut() -> None:
    sealed, durable = crashed_object()
    spans = segment_spans_unclosed(sealed)
    for cut in range(len(sealed) + 1):
        reader, plaintext = salvage(sealed[:cut])
        whole = [end for _start, end in spans if end <= cut]
        assert reader.verified_bytes == (whole[-1] if whole else 0) or reader.header is None
        assert durable.startswith(plaintext)


def segment_spans_unclosed(sealed: bytes) -> list[tuple[int, int]]:
    """(start, end) of the header and every record of an unclosed object."""
    header_length = parse_header(sealed)[1]  # type: ignore[index]
    spans, pos = [(0, header_length)], header_length
    while pos < len(sealed):
        (length,) = struct.unpack_from(">I", sealed, pos)
        end = pos + 4 + length + 16
        spans.append((pos, end))
        pos = end
    return spans


def test_resume_closes_a_salvaged_object_so_that_it_opens_normally() -> None:
    sealed, durable = crashed_object()
    torn = sealed + struct.pack(">I", 20) + bytes(9)  # a record cut short by the crash
    reader, plaintext = salvage(torn)
    assert reader.header is not None
    writer = ObjectWriter.resume(dek=DEK, header=reader.header, segments=reader.segments_opened)
    repaired = torn[: reader.verified_bytes] + bytes(writer.close())
    assert b"".join(stream_open(repaired, dek=DEK, tenant="acme", object_id="obj1")) == durable


def test_salvage_of_a_closed_object_says_it_is_complete() -> None:
    sealed = seal(
        PLAINTEXT,
        dek=DEK,
        tenant="acme",
        object_id="obj1",
        kek_id="k",
        kek_version=1,
        segment_size=32,
    )
    reader, plaintext = salvage(sealed)
    assert reader.complete
    assert plaintext == PLAINTEXT


def test_resume_refuses_a_wrong_key_and_salvage_a_tampered_record() -> None:
    sealed, _ = crashed_object()
    reader, _ = salvage(sealed)
    assert reader.header is not None
    with pytest.raises(DecryptionFailed, match="commitment"):
        ObjectWriter.resume(dek=bytes(32), header=reader.header, segments=1)
    tampered = bytearray(sealed)
    tampered[-5] ^= 1
    with pytest.raises(DecryptionFailed):
        salvage(bytes(tampered))
