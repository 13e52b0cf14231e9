"""A call track's sealed audio, turned into what the model hears: 16 kHz mono float32.

The track's objects are opened in memory (``MediaVault.open_object`` verifies every segment
before releasing it), their records rendered onto the call's timeline exactly as the WAV
export does (``storage.media.timeline.mono_pcm``: offsets kept, gaps silent, Opus decoded by PyAV),
and the result resampled with PyAV's resampler (FFmpeg's swresample) from the call's rate
to Whisper's 16 kHz. Nothing of it is ever written to a file. The numpy arrays this module
makes are overwritten when they are done with (``TrackAudio.wipe`` at the end of the
analysis, the intermediates here at once, also when decoding fails part-way). What it
cannot overwrite: the decrypted ``bytes`` it reads (immutable in Python; freed, not
cleared), FFmpeg's internal buffers, and the copies faster-whisper makes (its features):
those are released to the allocator when the analysis ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

from storage.media.codecs import Codec
from storage.media.timeline import mono_pcm
from storage.media.tracks import TrackRecord

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
        out = pcm.astype(np.float32)
        out /= 32768.0  # in place: no second copy of the audio to wipe
        return out
    if len(pcm) == 0:
        return np.zeros(0, dtype=np.float32)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=MODEL_RATE)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    parts = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    # swresample's delay can leave the tail a few samples short or long: the timeline is
    # exact, so the output is exactly the input's duration (the missing tail silent).
    expected = len(pcm) * MODEL_RATE // rate
    out = np.zeros(expected, dtype=np.float32)
    position = 0
    for part in parts:
        take = min(len(part), expected - position)
        out[position : position + take] = part[:take]
        position += take
        part.fill(0)  # the resampler's copies are wiped as they are used
    return out


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
    blocks: list[npt.NDArray[np.int16]] = []
    try:
        async for block in mono_pcm(records, codec=codec, frames=frames):
            blocks.append(block)
        samples = await asyncio.to_thread(_join_and_resample, blocks, rate)
    finally:  # also when the track fails part-way (a corrupt segment, a store error)
        await asyncio.to_thread(_wipe, blocks)
    return TrackAudio(track=track, samples=samples)


def _join_and_resample(blocks: list[npt.NDArray[np.int16]], rate: int) -> npt.NDArray[np.float32]:
    """One track's blocks joined and resampled (blocking: copies of a whole track)."""
    pcm = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int16)
    try:
        return resample(pcm, rate)
    finally:
        pcm.fill(0)


def _wipe(arrays: list[npt.NDArray[np.int16]]) -> None:
    for array in arrays:
        array.fill(0)
