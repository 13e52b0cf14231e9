"""A ZIP archive written as a stream whose memory does not grow with its entries.

Why not ``zipfile``: it keeps a ``ZipInfo`` object per entry until the archive closes, for
the central directory that the format puts after the entries: about half a kilobyte each,
so an export of a number with a million calls would hold gigabytes of them. Here each
entry's central-directory record is written to a spool file (an unlinked temporary file:
names, sizes, CRCs and offsets, never an entry's content) as the entry ends, and read back
once, at the end.

Sans-I/O but for the spool (STYLE.md §1): every method returns the bytes to send next. Every
entry carries a data descriptor (its CRC and sizes follow its data, so nothing is rewritten)
and ZIP64 fields (so neither an entry nor the archive is limited to 4 GiB); any ZIP reader
since 2001, Python's ``zipfile`` included, reads it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from datetime import datetime
from typing import IO

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_DESCRIPTOR = struct.Struct("<IIQQ")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_ZIP64_LOCAL = struct.Struct("<HHQQ")
_ZIP64_EXTRA = struct.Struct("<HHQQQ")
_END64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR = struct.Struct("<IIQI")
_END = struct.Struct("<IHHHHIIH")

_VERSION = 45
"""Version needed to extract: 4.5, ZIP64."""
_FLAGS = 0x0808
"""Sizes and CRC in a data descriptor (bit 3); names in UTF-8 (bit 11)."""
_MAX32 = 0xFFFFFFFF
_MAX16 = 0xFFFF
_READ_BACK = 64 * 1024


def dos_time(when: datetime) -> tuple[int, int]:
    """(time, date) in MS-DOS format, as a ZIP entry stores them."""
    time = (when.hour << 11) | (when.minute << 5) | (when.second // 2)
    date = ((when.year - 1980) << 9) | (when.month << 5) | when.day
    return time, date


class ZipStream:
    """One archive, written an entry at a time: ``begin``, ``write``..., ``end`` per entry,
    then ``finish``. ``directory`` is the spool of the central directory: an empty binary
    file that the caller opens and closes (``tempfile.TemporaryFile``)."""

    def __init__(self, directory: IO[bytes], when: datetime) -> None:
        self._directory = directory
        self._time, self._date = dos_time(when)
        self._offset = 0
        self._entries = 0
        self._entry: _Entry | None = None

    def begin(self, name: str, *, deflate: bool) -> bytes:
        """Start an entry: its local header."""
        if self._entry is not None:
            raise RuntimeError("the previous entry is not ended")
        encoded = name.encode()
        method = 8 if deflate else 0
        self._entry = _Entry(encoded, method, self._offset)
        extra = _ZIP64_LOCAL.pack(1, 16, 0, 0)  # the sizes are in the data descriptor
        header = _LOCAL.pack(
            0x04034B50, _VERSION, _FLAGS, method, self._time, self._date,
            0, _MAX32, _MAX32, len(encoded), len(extra),
        ) + encoded + extra  # fmt: skip
        return self._out(header)

    def write(self, data: bytes | bytearray | memoryview) -> bytes:
        """Add data to the entry; the (compressed) bytes to send, maybe none yet."""
        entry = self._require()
        return self._out(entry.add(data))

    def end(self) -> bytes:
        """End the entry: what the compressor held, then its data descriptor. Its record
        goes to the spool."""
        entry = self._require()
        tail = entry.flush()
        size = entry.compressed + len(tail)
        descriptor = _DESCRIPTOR.pack(0x08074B50, entry.crc, size, entry.size)
        extra = _ZIP64_EXTRA.pack(1, 24, entry.size, size, entry.offset)
        record = _CENTRAL.pack(
            0x02014B50, _VERSION, _VERSION, _FLAGS, entry.method, self._time, self._date,
            entry.crc, _MAX32, _MAX32, len(entry.name), len(extra), 0, 0, 0, 0, _MAX32,
        ) + entry.name + extra  # fmt: skip
        self._directory.write(record)
        self._entries += 1
        self._entry = None
        return self._out(tail + descriptor)

    def finish(self) -> Iterator[bytes]:
        """The central directory read back from the spool, then the end records."""
        if self._entry is not None:
            raise RuntimeError("the last entry is not ended")
        start = self._offset
        self._directory.seek(0)
        while block := self._directory.read(_READ_BACK):
            yield self._out(block)
        size, end64 = self._offset - start, self._offset
        count = self._entries
        yield self._out(
            _END64.pack(0x06064B50, 44, _VERSION, _VERSION, 0, 0, count, count, size, start)
            + _LOCATOR.pack(0x07064B50, 0, end64, 1)
            + _END.pack(
                0x06054B50,
                0,
                0,
                min(count, _MAX16),
                min(count, _MAX16),
                min(size, _MAX32),
                min(start, _MAX32),
                0,
            )  # fmt: skip
        )

    def _require(self) -> _Entry:
        if self._entry is None:
            raise RuntimeError("no entry is begun")
        return self._entry

    def _out(self, data: bytes) -> bytes:
        self._offset += len(data)
        return data


class _Entry:
    """The entry being written: its name, method, offset, CRC and sizes so far."""

    def __init__(self, name: bytes, method: int, offset: int) -> None:
        self.name = name
        self.method = method
        self.offset = offset
        self.crc = 0
        self.size = 0
        self.compressed = 0
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, -15) if method == 8 else None

    def add(self, data: bytes | bytearray | memoryview) -> bytes:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        out = bytes(data) if self._compressor is None else self._compressor.compress(data)
        self.compressed += len(out)
        return out

    def flush(self) -> bytes:
        return b"" if self._compressor is None else self._compressor.flush()
