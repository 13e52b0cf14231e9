"""A scan for plaintext audio in whatever the server keeps (files, objects).

Sealed objects, catalogs and spools must never hold a run of the audio a test sent; this
finds one at any offset, quickly, so tests can scan a whole data dir or bucket.
"""

from __future__ import annotations

from collections.abc import Mapping

RUN = 64
"""Length of a run of sent audio that must not appear in anything the server keeps."""
_KEY = RUN // 2


class PlaintextScan:
    """Finds a ``RUN``-byte run of any sent stream inside some bytes, at any offset of
    either (stronger than sliding the sent bytes at a stride, and fast).

    Every ``_KEY``-byte substring of the sent streams is indexed. A run in ``data`` starting
    at ``p`` covers the ``_KEY``-aligned block starting at the first multiple of ``_KEY`` at
    or after ``p`` (it ends at most ``RUN - 1`` bytes after ``p``), so looking up the aligned
    blocks of ``data`` finds every candidate; each hit is then confirmed on a whole run.
    """

    def __init__(self, sent: Mapping[str, bytes]) -> None:
        self._sent = dict(sent)
        self._keys = {
            stream[i : i + _KEY] for stream in sent.values() for i in range(len(stream) - _KEY + 1)
        }

    def first_leak(self, data: bytes) -> tuple[int, str] | None:
        """(offset in ``data``, name of the sent stream) of the first run found, or None.
        A run of one repeated byte (digital silence, 0xFF in µ-law) proves nothing and is
        not looked for."""
        for block in range(0, len(data) - _KEY + 1, _KEY):
            if data[block : block + _KEY] not in self._keys:
                continue
            if data.count(data[block : block + 1], block, block + _KEY) == _KEY:
                continue
            for start in range(max(0, block - _KEY + 1), min(block, len(data) - RUN) + 1):
                window = data[start : start + RUN]
                for name, stream in self._sent.items():
                    if window in stream:
                        return start, name
        return None
