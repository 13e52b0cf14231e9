"""A call track's sealed audio, turned into what the model hears: 16 kHz mono float32.

The track's objects are opened in memory (``MediaVault.open_object`` verifies every segment
before releasing it), their records rendered onto the call's timeline exactly as the WAV
export does (``storage.media.mono_pcm``: offsets kept, gaps silent, Opus decoded by PyAV),
and the result resampled with PyAV's resampler (FFmpeg's swresample) from the call's rate
to Whisper's 16 kHz. Nothing of it is ever written to a file: the plaintext lives in numpy
arrays that ``TrackAudio.wipe`` overwrites when the analysis ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

from storage.media import Codec, TrackRecord, mono_pcm

MODEL_RATE = 16000
"""The sample rate Whisper (and Silero VAD) expects."""


@dataclass(frozen=True, slots=True)
class TrackAudio:
    """One track's audio at ``MODEL_RATE``, floats in [-1, 1]."""

    track: str
    samples: npt.NDArray[np.float32]

    @property
    def duration_s(self) -> float:
        return len(self.samples) / MODEL_RATE

    def wipe(self) -> int:
        """Overwrite the samples with zeros (the purge of this working copy); its bytes."""
        self.samples.fill(0.0)
        return int(self.samples.nbytes)


def resample(pcm: npt.NDArray[np.int16], rate: int) -> npt.NDArray[np.float32]:
    """16-bit mono at ``rate`` to float32 mono at ``MODEL_RATE`` (blocking: FFmpeg)."""
    if rate == MODEL_RATE:
        return (pcm.astype(np.float32) / 32768.0).astype(np.float32)
    if len(pcm) == 0:
        return np.zeros(0, dtype=np.float32)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=MODEL_RATE)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    parts = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    out = np.concatenate(parts).astype(np.float32, copy=False)
    # swresample's delay can leave the tail a few samples short or long: the timeline is
    # exact, so the output is exactly the input's duration.
    expected = len(pcm) * MODEL_RATE // rate
    if len(out) < expected:
        out = np.concatenate([out, np.zeros(expected - len(out), dtype=np.float32)])
    return out[:expected]


async def decode_track(
    track: str,
    records: AsyncIterator[TrackRecord],
    *,
    codec: Codec,
    rate: int,
    frames: int,
) -> TrackAudio:
    """Render a track's records over [0, frames) at ``rate`` and resample it for the model;
    the blocking part (PyAV) runs in a worker thread."""
    blocks = [block async for block in mono_pcm(records, codec=codec, frames=frames)]
    pcm = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int16)
    try:
        samples = await asyncio.to_thread(resample, pcm, rate)
    finally:
        pcm.fill(0)
        for block in blocks:
            block.fill(0)
    return TrackAudio(track=track, samples=samples)
