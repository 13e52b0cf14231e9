"""The RIFF/WAVE header of the 16-bit PCM files the gateway exports.

Why this module exists: a recording's audio is served as a stereo WAV streamed block by block
(``storage.media.timeline`` renders the samples); the header has to go first, before any audio
is rendered, so it is built from sizes the catalog already knows rather than by a WAV writer
that wants the whole file.
"""

from __future__ import annotations

import struct

__all__ = ["wav_header"]

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
