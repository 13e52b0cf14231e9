"""The codec table: every raw audio encoding a track may hold, and how to measure, decode
and encode its payloads.

Why this module exists: ingest, export, the AI worker, the demo and the benches all name a
track's codec (``"pcmu"``, ``"pcma"``, ``"l16"``, ``"opus"``) and need the same answer to
"how many samples is this payload" and "what are its samples". ``codec(name)`` is that one
lookup; an unknown name is the API's ``unsupported_codec``.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from storage.errors import StorageError, UnsupportedMedia
from storage.media import g711, opus

__all__ = ["CODECS", "Codec", "codec"]


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
    stateful decoder (``storage.media.opus``); ``decode`` and ``encode`` are not for it.
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
        "pcmu": Codec("pcmu", 1, g711.ULAW_DECODE, g711.ULAW_ENCODE),
        "pcma": Codec("pcma", 1, g711.ALAW_DECODE, g711.ALAW_ENCODE),
        "l16": Codec("l16", 2),
        "opus": Codec("opus", 0),
    }
)
"""Every codec a track may hold, by name."""


def codec(name: str) -> Codec:
    """The codec called ``name``; ``UnsupportedMedia`` (code ``unsupported_codec``) if none is."""
    try:
        return CODECS[name]
    except KeyError:
        raise UnsupportedMedia(
            f"unsupported codec {name!r}; supported: {', '.join(sorted(CODECS))}",
            code="unsupported_codec",
        ) from None
