"""Opus packets as a track stores them: their length in samples, and their decoding.

Why this module exists: an Opus track is stored the way it arrived, one RTP payload per
track record (DESIGN.md: "Opus stays Opus packets"), so that nothing is transcoded at ingest.
Two things then need to know about Opus without a media library in the hot path:

* how many samples a packet covers, so that the ingest timeline advances and the catalog
  knows the track's length, which the packet's first byte (its TOC, RFC 6716 §3.1) says
  without decoding anything (``packet_samples``, pure arithmetic);
* its audio, on export and in the AI worker, which needs a real decoder: PyAV (FFmpeg's
  Opus decoder), run off the event loop by the callers (``OpusDecoder``, stateful, one per
  track, fed packets in timeline order).

Everything is at 48 kHz, Opus's RTP clock rate (RFC 7587), mono.
"""

from __future__ import annotations

from typing import Any

import av
import numpy as np
import numpy.typing as npt

from storage.errors import StorageError

__all__ = ["OPUS_RATE", "OpusDecoder", "packet_samples"]

OPUS_RATE = 48_000
"""Opus's RTP clock rate and the sample rate of every Opus track (RFC 7587 §4.1)."""

MAX_PACKET_SAMPLES = 5760
"""A packet covers at most 120 ms (RFC 6716 §3.2.5, R5)."""

# Samples per frame at 48 kHz for each TOC configuration (RFC 6716 Table 2): SILK-only
# 0-11 (10/20/40/60 ms), hybrid 12-15 (10/20 ms), CELT-only 16-31 (2.5/5/10/20 ms).
_FRAME_SAMPLES = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4


def packet_samples(packet: bytes | bytearray | memoryview) -> int:
    """How many 48 kHz samples ``packet`` decodes to, from its TOC byte and frame count.

    Raises ``StorageError`` for what cannot be an Opus packet: an empty one, code 1 with an
    odd payload, code 3 without its frame-count byte or with zero frames, more than 120 ms.
    Only the framing is checked; whether the frames decode is the decoder's business.
    """
    if not packet:
        raise StorageError("an Opus packet cannot be empty")
    toc = packet[0]
    frame = _FRAME_SAMPLES[toc >> 3]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code == 1:
        if (len(packet) - 1) % 2:
            raise StorageError("an Opus code-1 packet must carry two frames of equal size")
        frames = 2
    elif code == 2:
        if len(packet) < 2:
            raise StorageError("an Opus code-2 packet must carry the first frame's length")
        frames = 2
    else:
        if len(packet) < 2:
            raise StorageError("an Opus code-3 packet must carry its frame count")
        frames = packet[1] & 0x3F
        if frames == 0:
            raise StorageError("an Opus code-3 packet must carry at least one frame")
    samples = frames * frame
    if samples > MAX_PACKET_SAMPLES:
        raise StorageError(f"an Opus packet covers at most 120 ms, not {samples / 48:.1f} ms")
    return samples


class OpusDecoder:
    """Decodes one track's packets, in timeline order, to 16-bit mono at 48 kHz.

    Stateful (Opus predicts from the previous packet), so one decoder per track. Blocking
    (FFmpeg): callers on the event loop run ``decode`` in an executor. A packet the decoder
    rejects becomes silence of the packet's length: one bad packet in a stored track must
    not make the rest of the call unplayable.
    """

    def __init__(self) -> None:
        self._context = av.CodecContext.create("opus", "r")
        self._context.sample_rate = OPUS_RATE
        self._context.layout = "mono"

    def decode(self, packet: bytes) -> npt.NDArray[np.int16]:
        """Exactly ``packet_samples(packet)`` samples of the packet's audio."""
        samples = packet_samples(packet)
        try:
            frames = self._context.decode(av.Packet(packet))
        except av.FFmpegError:
            return np.zeros(samples, dtype=np.int16)
        parts = [frame.to_ndarray() for frame in frames]
        if not parts:
            return np.zeros(samples, dtype=np.int16)
        pcm: npt.NDArray[Any] = np.concatenate(parts, axis=-1)
        # Planar float (channels, samples) or packed int16 (1, samples x channels): either
        # way, mixed down to one channel.
        if pcm.dtype.kind == "f":
            mono = pcm.mean(axis=0) if pcm.ndim == 2 else pcm
            out = np.clip(np.rint(mono * 32768.0), -32768, 32767).astype(np.int16)
        else:
            out = pcm.reshape(-1).astype(np.int16)
        if len(out) < samples:
            out = np.concatenate([out, np.zeros(samples - len(out), dtype=np.int16)])
        return out[:samples]
