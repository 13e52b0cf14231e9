"""What the model hears: a track rendered on the call's timeline, resampled to 16 kHz, in
blocks that are, sample for sample, the whole track resampled at once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from ai.audio import MODEL_RATE, TrackSource, resample
from storage.media.codecs import codec
from storage.media.tracks import TrackRecord


def tone(seconds: float, hz: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * 12000).astype(np.int16)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_resampling_keeps_duration_and_pitch(rate: int) -> None:
    pcm = tone(2.0, 440, rate)
    out = resample(pcm, rate)
    assert out.dtype == np.float32
    assert len(out) == 2 * MODEL_RATE
    assert dominant_hz(out, MODEL_RATE) == pytest.approx(440, abs=1)
    assert float(np.abs(out).max()) == pytest.approx(12000 / 32768, rel=0.05)


def test_resampling_nothing_gives_nothing() -> None:
    assert len(resample(np.zeros(0, dtype=np.int16), 8000)) == 0


async def records(*items: tuple[int, bytes]) -> AsyncIterator[TrackRecord]:
    for offset, payload in items:
        yield TrackRecord(offset, payload)


def source(items: list[tuple[int, bytes]], frames: int, rate: int = 8000) -> TrackSource:
    async def opened() -> AsyncIterator[TrackRecord]:
        return records(*items)

    name = "pcmu" if rate == 8000 else "l16"
    return TrackSource(track="inbound", codec=codec(name), rate=rate, frames=frames, records=opened)


async def read(track: TrackSource) -> tuple[np.ndarray, list[np.ndarray]]:
    """The track joined, and the blocks themselves (which the decoder overwrites)."""
    blocks, copies = [], []
    async for block in track.blocks():
        blocks.append(block)
        copies.append(block.copy())
    return np.concatenate(copies), blocks


async def test_a_track_lands_on_the_timeline_with_gaps_silent_and_is_wiped() -> None:
    ulaw = codec("pcmu")
    burst = ulaw.encode(tone(0.5, 300, 8000))
    track = source([(8000, burst), (24000, burst)], 4 * 8000)
    samples, blocks = await read(track)
    assert track.duration_s == 4.0
    assert len(samples) == track.length == 4 * MODEL_RATE
    loud = np.abs(samples) > 0.05
    seconds = np.flatnonzero(loud) / MODEL_RATE
    assert seconds.min() == pytest.approx(1.0, abs=0.01)
    assert seconds.max() == pytest.approx(3.5, abs=0.01)
    assert not loud[int(1.6 * MODEL_RATE) : int(2.9 * MODEL_RATE)].any()  # the gap
    assert blocks and not any(block.any() for block in blocks)  # each block overwritten


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_blocks_are_the_whole_track_resampled_at_once_sample_for_sample(rate: int) -> None:
    # 25 s: three blocks of BLOCK_S, records crossing block boundaries, a gap, a ragged end.
    pcm = tone(25.0, 440, rate)
    name = "pcmu" if rate == 8000 else "l16"
    payload = codec(name).encode(pcm)
    width = len(payload) // len(pcm)
    step = int(rate * 3.7)
    items = [
        (offset, payload[offset * width : (offset + step) * width])
        for offset in range(0, len(pcm), step)
        if not rate * 8 <= offset < rate * 12
    ]
    frames = len(pcm) + 123
    samples, _ = await read(source(items, frames, rate))
    timeline = np.zeros(frames, dtype=np.int16)
    for offset, chunk in items:
        decoded = codec(name).decode(chunk)
        timeline[offset : offset + len(decoded)] = decoded
    assert np.array_equal(samples, resample(timeline, rate))


async def test_a_track_decoded_into_a_buffer_is_left_to_its_owner() -> None:
    burst = codec("pcmu").encode(tone(0.5, 300, 8000))
    track = source([(0, burst)], 8000)
    into = np.zeros(track.length, dtype=np.float32)
    views = [block async for block in track.blocks(into=into)]
    assert sum(len(v) for v in views) == track.length
    assert np.abs(into).max() > 0.05  # not overwritten: the caller owns and wipes it
