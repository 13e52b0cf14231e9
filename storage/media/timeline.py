"""Tracks rendered onto the call's timeline: stereo for export, mono for the AI worker.

Why this module exists: a track is a sequence of records stamped with sample offsets
(``storage.media.tracks``), with gaps where nothing arrived, records that may overlap after a
reconnect, and Opus packets that only a stateful decoder can turn into samples. Export (one
stereo WAV, inbound left, outbound right) and the AI worker (one mono array per track) must
hear the same audio, so both render through the one cursor here: offsets kept, silence in
gaps, the later record winning an overlap.

Sans-I/O (STYLE.md §1): the renderers consume async iterators of records without knowing
where they come from, and hold only the records overlapping the current block, never a track.
Records out of order raise ``StorageError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from storage.errors import StorageError
from storage.media import opus
from storage.media.codecs import Codec
from storage.media.tracks import TrackRecord

__all__ = ["mono_pcm", "stereo_pcm"]


@dataclass(frozen=True, slots=True)
class _HeldRecord:
    """A record the cursor still needs, with its extent on the timeline precomputed."""

    start: int
    end: int
    payload: bytes
    """Codec bytes; for a packet codec, the packet until it is decoded to L16."""
    decoded: bool = True


_L16 = Codec("l16", 2)


class _TrackCursor:
    """Renders one track block by block, in timeline order.

    It pulls records only until it holds one starting at or past the block's end (the one
    record of look-ahead that proves nothing else touches the block, given the writer's
    increasing offsets), and forgets each record once the timeline has passed its end. So
    it holds the records overlapping the current block plus that one, never the track.
    Sample codecs are decoded per block, a payload slice at a time; packets (Opus) are
    decoded whole as they are pulled, in pull order, by one stateful decoder in a worker
    thread (FFmpeg blocks), and held as L16.
    """

    def __init__(self, records: AsyncIterator[TrackRecord] | None, codec: Codec) -> None:
        self._records = records
        self._exhausted = False
        self._codec = codec
        self._held: list[_HeldRecord] = []
        self._last_offset = 0
        self._decoder = opus.OpusDecoder() if codec.packetized else None

    async def _pull_until(self, stop: int) -> None:
        """Pull records until one starts at or after ``stop`` or the track ends."""
        records = self._records
        while records is not None and not self._exhausted:
            if self._held and self._held[-1].start >= stop:
                break
            try:
                record = await anext(records)
            except StopAsyncIteration:
                # The iterator is kept (not dropped) so that aclose() still reaches it.
                self._exhausted = True
                break
            if record.offset < self._last_offset:
                raise StorageError(
                    f"track record at sample {record.offset} follows one at sample "
                    f"{self._last_offset}; records must come in increasing offset order"
                )
            self._last_offset = record.offset
            try:
                end = record.offset + self._codec.frames(record.payload)
            except StorageError as e:
                raise StorageError(f"track record at sample {record.offset}: {e.message}") from e
            packet = self._decoder is not None
            self._held.append(_HeldRecord(record.offset, end, record.payload, not packet))
        if self._decoder is not None and any(not held.decoded for held in self._held):
            self._held = await asyncio.to_thread(_decode_packets, self._decoder, self._held)

    async def render(self, start: int, stop: int) -> npt.NDArray[np.int16]:
        """The track's samples for timeline ``[start, stop)``; silence where no record is."""
        await self._pull_until(stop)
        out = np.zeros(stop - start, dtype=np.int16)
        codec = _L16 if self._decoder is not None else self._codec
        width = codec.bytes_per_sample
        # Held records are in arrival order, so a later record overwrites an earlier one
        # wherever they overlap: "the later one wins".
        for held in self._held:
            lo = max(start, held.start)
            hi = min(stop, held.end)
            if lo < hi:
                with memoryview(held.payload) as view:
                    chunk = view[(lo - held.start) * width : (hi - held.start) * width]
                    out[lo - start : hi - start] = codec.decode(chunk)
        self._held = [held for held in self._held if held.end > stop]
        return out

    async def aclose(self) -> None:
        """Close the record iterator if it can be closed (async generators can)."""
        records, self._records = self._records, None
        close = getattr(records, "aclose", None)
        if close is not None:
            await close()


def _decode_packets(decoder: opus.OpusDecoder, held: list[_HeldRecord]) -> list[_HeldRecord]:
    """``held`` with every packet not yet decoded replaced by its L16 samples."""
    return [
        item
        if item.decoded
        else _HeldRecord(item.start, item.end, decoder.decode(item.payload).astype("<i2").tobytes())
        for item in held
    ]


async def stereo_pcm(
    left: AsyncIterator[TrackRecord] | None,
    right: AsyncIterator[TrackRecord] | None,
    *,
    codec: Codec,
    frames: int,
    block_frames: int = 8000,
) -> AsyncIterator[bytes]:
    """Interleaved little-endian int16 stereo for timeline [0, frames).

    Each record's samples are placed at its offset, silence where no record covers, samples
    at or past ``frames`` dropped. Yields blocks of at most ``block_frames * 4`` bytes,
    ``frames * 4`` bytes in all. Memory: holds only the records overlapping the current
    block (plus one of look-ahead per track), never a whole track. A missing track (None)
    is silence. Records must arrive in non-decreasing offset order (the writer guarantees
    it; a record that goes back raises ``StorageError``); where one overlaps an earlier
    one, the later one wins.

    The iterators are consumed only as far as ``frames`` needs and are closed (``aclose``,
    where they have one) when this generator finishes or is closed: it owns them.
    """
    if frames < 0:
        raise ValueError(f"frames must not be negative, not {frames}")
    if block_frames < 1:
        raise ValueError(f"block_frames must be positive, not {block_frames}")
    tracks = (_TrackCursor(left, codec), _TrackCursor(right, codec))
    try:
        for start in range(0, frames, block_frames):
            stop = min(start + block_frames, frames)
            block = np.empty((stop - start, 2), dtype="<i2")
            block[:, 0] = await tracks[0].render(start, stop)
            block[:, 1] = await tracks[1].render(start, stop)
            yield block.tobytes()
    finally:
        for track in tracks:
            await track.aclose()


async def mono_pcm(
    records: AsyncIterator[TrackRecord] | None,
    *,
    codec: Codec,
    frames: int,
    block_frames: int = 8000,
) -> AsyncGenerator[npt.NDArray[np.int16], None]:
    """One track's int16 samples for timeline [0, frames), in blocks of at most
    ``block_frames``: ``stereo_pcm``'s rendering (offsets, silence in gaps, the later record
    winning an overlap) for one track, as the AI worker reads it. It owns ``records``."""
    if frames < 0:
        raise ValueError(f"frames must not be negative, not {frames}")
    if block_frames < 1:
        raise ValueError(f"block_frames must be positive, not {block_frames}")
    track = _TrackCursor(records, codec)
    try:
        for start in range(0, frames, block_frames):
            yield await track.render(start, min(start + block_frames, frames))
    finally:
        await track.aclose()
