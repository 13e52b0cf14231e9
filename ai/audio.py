"""A call track's sealed audio, turned into what the model hears: 16 kHz mono float32,
streamed block by block so that no step holds the whole track.

The track's objects are read as streams (``MediaVault.open_object`` verifies every segment
before releasing it), their records rendered onto the call's timeline exactly as the WAV
export does (``storage.media.timeline.mono_pcm``: offsets kept, gaps silent, Opus decoded
by PyAV), and each block resampled with one PyAV resampler (FFmpeg's swresample) carried
from block to block, from the call's rate to Whisper's 16 kHz: swresample is a stream, so
the blocks are, sample for sample, what resampling the whole track at once gives
(``tests/unit/test_ai_audio.py`` checks it). A ``TrackSource`` can be read as many times as
the analysis needs (``ai.pipeline`` reads a long track twice: speech first, then the
windows Whisper hears), and holds nothing between reads.

Nothing of it is ever written to a file. The numpy arrays this module makes are overwritten
when they are done with (each block when its consumer asks for the next one, or stops;
the intermediates at once, also when decoding fails part-way). What it cannot overwrite:
the decrypted ``bytes`` it reads (immutable in Python; freed, not cleared), FFmpeg's
internal buffers, and the copies faster-whisper makes (its features): those are released
to the allocator when the analysis ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

from storage.media.codecs import Codec
from storage.media.timeline import mono_pcm
from storage.media.tracks import TrackRecord

MODEL_RATE = 16000
"""The sample rate Whisper (and Silero VAD) expects."""
BLOCK_S = 10
"""Seconds of track decoded at a time: small next to a window, large enough that the
per-block overhead (a thread hop, a resampler call) does not matter."""


class Resampler:
    """16-bit mono at ``rate`` to float32 mono at ``MODEL_RATE``, fed in blocks, giving
    exactly ``frames * MODEL_RATE // rate`` samples in all (blocking: FFmpeg).

    swresample's delay can leave the tail a few samples short or long: the timeline is
    exact, so the output is cut at, or padded with silence to, the input's duration."""

    def __init__(self, rate: int, frames: int) -> None:
        self._rate = rate
        self._left = frames * MODEL_RATE // rate
        self._resampler = (
            None
            if rate == MODEL_RATE
            else av.AudioResampler(format="flt", layout="mono", rate=MODEL_RATE)
        )

    def resample(self, pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.float32]:
        """The output of the next block (possibly a few samples more or less than it)."""
        if self._resampler is None:
            out = pcm.astype(np.float32)
            out /= 32768.0  # in place: no second copy of the audio to wipe
            return self._take([out])
        if len(pcm) == 0:
            return np.zeros(0, dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self._rate
        return self._take([_floats(out) for out in self._resampler.resample(frame)])

    def finish(self) -> npt.NDArray[np.float32]:
        """The rest: what the resampler still holds, then silence up to the exact length."""
        parts: list[npt.NDArray[np.float32]] = []
        if self._resampler is not None:
            parts = [_floats(out) for out in self._resampler.resample(None)]
        flushed = self._take(parts)
        out = np.zeros(len(flushed) + self._left, dtype=np.float32)
        out[: len(flushed)] = flushed
        flushed.fill(0.0)
        self._left = 0
        return out

    def _take(self, parts: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        """``parts`` joined, cut at what is left of the length; the parts wiped."""
        out = np.zeros(min(self._left, sum(len(part) for part in parts)), dtype=np.float32)
        position = 0
        for part in parts:
            take = min(len(part), len(out) - position)
            out[position : position + take] = part[:take]
            position += take
            part.fill(0)  # the resampler's copies are wiped as they are used
        self._left -= len(out)
        return out


def _floats(frame: av.AudioFrame) -> npt.NDArray[np.float32]:
    return frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)


def resample(pcm: npt.NDArray[np.int16], rate: int) -> npt.NDArray[np.float32]:
    """A whole 16-bit mono signal at ``rate`` to float32 at ``MODEL_RATE`` (blocking)."""
    resampler = Resampler(rate, len(pcm))
    head = resampler.resample(pcm)
    tail = resampler.finish()
    out = np.concatenate([head, tail]) if len(tail) else head
    if out is not head:
        head.fill(0.0)
    return out


def _resample_block(
    resampler: Resampler, pcm: npt.NDArray[np.int16] | None
) -> npt.NDArray[np.float32]:
    """One block through ``resampler`` (``None``: its end); the input block wiped."""
    try:
        return resampler.finish() if pcm is None else resampler.resample(pcm)
    finally:
        if pcm is not None:
            pcm.fill(0)


async def decode_blocks(
    records: AsyncIterator[TrackRecord],
    *,
    codec: Codec,
    rate: int,
    frames: int,
    into: npt.NDArray[np.float32] | None = None,
) -> AsyncGenerator[npt.NDArray[np.float32], None]:
    """A track rendered over [0, frames) at ``rate``, at ``MODEL_RATE``, in consecutive
    blocks of about ``BLOCK_S`` seconds; it owns ``records``. Each block is overwritten
    when the consumer asks for the next one (or stops): a consumer that keeps audio copies
    it. With ``into`` (the whole track's length), the blocks are written there and yielded
    as views of it instead, and the caller owns (and wipes) them. Blocking parts (PyAV)
    run in worker threads."""
    resampler = Resampler(rate, frames)
    position = 0
    async with contextlib.aclosing(
        _then_end(mono_pcm(records, codec=codec, frames=frames, block_frames=rate * BLOCK_S))
    ) as blocks:
        async for pcm in blocks:
            out = await asyncio.to_thread(_resample_block, resampler, pcm)
            if into is not None:
                into[position : position + len(out)] = out
                out.fill(0.0)
                out = into[position : position + len(out)]
            position += len(out)
            try:
                if len(out):
                    yield out
            finally:
                if into is None:
                    out.fill(0.0)


async def _then_end(
    blocks: AsyncGenerator[npt.NDArray[np.int16], None],
) -> AsyncGenerator[npt.NDArray[np.int16] | None, None]:
    """``blocks``, then ``None`` for their end (the resampler's flush); owns ``blocks``."""
    async with contextlib.aclosing(blocks):
        async for block in blocks:
            yield block
    yield None


@dataclass(frozen=True, slots=True)
class TrackSource:
    """One track's sealed audio, which the analysis may read more than once: ``records``
    opens the track's records afresh each time (the vault's streams, in order)."""

    track: str
    codec: Codec
    rate: int
    frames: int
    """The call's length in samples at ``rate``: every track is rendered over all of it."""
    records: Callable[[], Awaitable[AsyncIterator[TrackRecord]]]

    @property
    def length(self) -> int:
        """The track's length in samples at ``MODEL_RATE``."""
        return self.frames * MODEL_RATE // self.rate

    @property
    def duration_s(self) -> float:
        return self.length / MODEL_RATE

    async def blocks(
        self, into: npt.NDArray[np.float32] | None = None
    ) -> AsyncGenerator[npt.NDArray[np.float32], None]:
        """The track at ``MODEL_RATE``, block by block (``decode_blocks``)."""
        records = await self.records()
        async with contextlib.aclosing(
            decode_blocks(records, codec=self.codec, rate=self.rate, frames=self.frames, into=into)
        ) as blocks:
            async for block in blocks:
                yield block
