"""Stretches of a stored track overwritten: the audio half of redaction.

A caller who reads out a card number leaves it in the recording as well as in the
transcript, so redaction (``ai.redaction.audio``) rewrites the track with each redacted
stretch replaced by silence or by a 1 kHz tone (audibly "bleeped"). The track keeps its
codec and timeline: a record that does not touch a stretch is copied as it is; one that
does is decoded, overwritten over the stretch and encoded again (G.711, L16), or, for Opus,
whose packets cannot be cut, replaced whole by packets of the fill that cover the same
samples, so nothing of the packet's audio survives and the timeline does not move.

Sans-I/O (STYLE.md §1): ``TrackMasker`` is fed a track's records in order and hands back
the records to store instead; the worker (``ai.audioredaction``) moves them between the
sealed objects.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from storage.media import opus
from storage.media.codecs import Codec
from storage.media.tracks import TrackRecord

__all__ = ["TONE_HZ", "TONE_LEVEL", "Mask", "TrackMasker"]

TONE_HZ = 1000
"""The tone's frequency: the broadcast "bleep"."""
TONE_LEVEL = 0.25
"""The tone's amplitude, of full scale (-12 dBFS): clearly heard, never clipped."""

Fill = Literal["silence", "tone"]


@dataclass(frozen=True, slots=True)
class Mask:
    """The stretches of one track to overwrite, in samples on the call's timeline, sorted
    and not overlapping (``Mask.build`` merges them), and what to write there."""

    intervals: tuple[tuple[int, int], ...]
    fill: Fill
    rate: int

    @classmethod
    def build(cls, intervals: Sequence[tuple[int, int]], fill: Fill, rate: int) -> Mask:
        merged: list[tuple[int, int]] = []
        for start, end in sorted((max(0, s), e) for s, e in intervals if e > max(0, s)):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return cls(tuple(merged), fill, rate)

    def overlapping(self, start: int, end: int) -> list[tuple[int, int]]:
        """The intervals that overlap ``[start, end)``, clipped to it."""
        found: list[tuple[int, int]] = []
        i = bisect.bisect_right(self.intervals, (start, start)) - 1
        for s, e in self.intervals[max(0, i) :]:
            if s >= end:
                break
            if e > start:
                found.append((max(s, start), min(e, end)))
        return found

    def samples(self, start: int, end: int) -> npt.NDArray[np.int16]:
        """The fill for ``[start, end)``: silence, or the tone in phase with the timeline
        (so a stretch cut across records is one unbroken tone)."""
        if self.fill == "silence":
            return np.zeros(end - start, dtype=np.int16)
        t = np.arange(start, end, dtype=np.float64) / self.rate
        wave = TONE_LEVEL * 32767 * np.sin(2 * np.pi * TONE_HZ * t)
        return np.rint(wave).astype(np.int16)


class TrackMasker:
    """Rewrites one track's records through a ``Mask``; ``masked`` counts the samples
    overwritten. Opus fill is encoded by libopus (PyAV), so ``mask`` blocks: callers on
    the event loop run it in a thread."""

    def __init__(self, codec: Codec, mask: Mask) -> None:
        self._codec = codec
        self._mask = mask
        self._encoder: _OpusFill | None = None
        self.masked = 0

    @property
    def packetized(self) -> bool:
        """Whether ``mask`` encodes (Opus: blocking, for a thread)."""
        return self._codec.packetized

    def touches(self, record: TrackRecord) -> bool:
        """Whether ``mask`` would change ``record``."""
        end = record.offset + self._codec.frames(record.payload)
        return bool(self._mask.overlapping(record.offset, end))

    def mask(self, record: TrackRecord) -> list[TrackRecord]:
        """The records to store instead of ``record`` (itself, when it is untouched)."""
        length = self._codec.frames(record.payload)
        end = record.offset + length
        stretches = self._mask.overlapping(record.offset, end)
        if not stretches:
            return [record]
        if self._codec.packetized:
            self.masked += length
            if self._encoder is None:
                self._encoder = _OpusFill(self._mask)
            return self._encoder.replace(record.offset, length)
        pcm = self._codec.decode(record.payload)
        try:
            for start, stop in stretches:
                pcm[start - record.offset : stop - record.offset] = self._mask.samples(start, stop)
                self.masked += stop - start
            return [TrackRecord(record.offset, self._codec.encode(pcm))]
        finally:
            pcm.fill(0)  # the decoded original, overwritten before it is let go


class _OpusFill:
    """Opus packets of the fill, made by libopus, covering given samples of the timeline."""

    def __init__(self, mask: Mask) -> None:
        self._mask = mask
        self._contexts: dict[int, Any] = {}

    def _context(self, frame: int) -> Any:
        import av

        if frame not in self._contexts:
            context = av.CodecContext.create("libopus", "w")
            context.sample_rate = opus.OPUS_RATE
            context.layout = "mono"
            context.format = "s16"
            context.options = {"frame_duration": str(frame / 48), "application": "audio"}
            context.open()
            self._contexts[frame] = context
        return self._contexts[frame]

    def replace(self, offset: int, length: int) -> list[TrackRecord]:
        """Packets covering ``[offset, offset + length)``, one record each: frames of the
        largest size (20, 10, 5 or 2.5 ms) that divides the packet's length."""
        import av

        frame = next(f for f in (960, 480, 240, 120) if length % f == 0)
        context = self._context(frame)
        records: list[TrackRecord] = []
        position = offset
        # libopus holds back a few ms (its look-ahead): feed frames until it has handed out
        # enough packets for the stretch; the fill is uniform, so which ms they carry does
        # not matter, only that they cover the stretch and decode to the fill.
        fed = offset
        while position < offset + length:
            samples = self._mask.samples(fed, fed + frame)
            audio = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
            audio.sample_rate = opus.OPUS_RATE
            fed += frame
            for packet in context.encode(audio):
                if position < offset + length:
                    records.append(TrackRecord(position, bytes(packet)))
                    position += frame
        return records
