"""The streamed ZIP: what Python's ``zipfile`` reads back (names, bytes, CRCs, times), an
empty archive, entries stored and deflated, and a central directory that lives in the spool
file, not in memory."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from datetime import UTC, datetime

import pytest

from gateway.api.zipstream import ZipStream

WHEN = datetime(2026, 12, 6, 10, 47, 31, tzinfo=UTC)


def build(entries: list[tuple[str, list[bytes], bool]]) -> tuple[bytes, int]:
    """The archive's bytes, and how many bytes its spool held."""
    with tempfile.TemporaryFile() as spool:
        stream = ZipStream(spool, WHEN)
        out = io.BytesIO()
        for name, pieces, deflate in entries:
            out.write(stream.begin(name, deflate=deflate))
            for piece in pieces:
                out.write(stream.write(piece))
            out.write(stream.end())
        spooled = spool.tell()
        for block in stream.finish():
            out.write(block)
    return out.getvalue(), spooled


def test_zipfile_reads_back_every_entry_stored_or_deflated() -> None:
    noise = os.urandom(70_000)
    entries = [
        ("calls.json", [b"[\n  ", b'{"a": 1}' * 5000, b"\n]"], True),
        ("recordings/r1/audio.wav", [noise[:1], noise[1:], b""], False),
        ("empty.json", [], True),
        ("recordings/r\u00e9/recording.json", [b"{}"], True),
    ]
    data, spooled = build(entries)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == [name for name, _, _ in entries]
        for name, pieces, deflate in entries:
            assert archive.read(name) == b"".join(pieces)
            info = archive.getinfo(name)
            assert info.compress_type == (zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
            assert info.date_time == (2026, 12, 6, 10, 47, 30)  # DOS time: 2 s steps
    assert spooled > 4 * 46  # the central directory went to the spool, a record per entry


def test_an_empty_archive_is_a_valid_zip() -> None:
    data, _ = build([])
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == []


def test_entries_must_be_begun_and_ended_in_turn() -> None:
    with tempfile.TemporaryFile() as spool:
        stream = ZipStream(spool, WHEN)
        with pytest.raises(RuntimeError, match="no entry"):
            stream.write(b"x")
        stream.begin("a", deflate=False)
        with pytest.raises(RuntimeError, match="not ended"):
            stream.begin("b", deflate=False)
        with pytest.raises(RuntimeError, match="not ended"):
            list(stream.finish())
