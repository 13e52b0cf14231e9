"""G.711 µ-law and A-law as lookup tables: the codecs telephony tracks arrive in.

Why this module exists: PBX audio is mostly G.711, stored untranscoded, so export and the AI
worker decode it and the demo, the benches and the tests encode it. Both directions are table
lookups (``storage.media.codecs.Codec`` indexes these tables), so the arithmetic lives here
once, run once at import.

G.711 follows ITU-T G.711 as the classic Sun ``g711.c`` implements it: decoding through
256-entry tables, encoding through a 65536-entry table (one lookup per sample, indexed by the
sample's bit pattern read as uint16) built by a vectorised form of ``linear2ulaw`` /
``linear2alaw``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["ALAW_DECODE", "ALAW_ENCODE", "ULAW_DECODE", "ULAW_ENCODE"]

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


ULAW_DECODE = _ulaw_decode_table()
"""int16 sample of each µ-law code (index: the code byte)."""
ULAW_ENCODE = _ulaw_encode_table()
"""µ-law code of each int16 sample (index: the sample's bit pattern as uint16)."""
ALAW_DECODE = _alaw_decode_table()
"""int16 sample of each A-law code (index: the code byte)."""
ALAW_ENCODE = _alaw_encode_table()
"""A-law code of each int16 sample (index: the sample's bit pattern as uint16)."""
