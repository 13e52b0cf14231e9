"""What the model hears: a track rendered on the call's timeline, resampled to 16 kHz."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from ai.audio import MODEL_RATE, decode_track, resample
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


async def test_a_track_lands_on_the_timeline_with_gaps_silent_and_is_wiped() -> None:
    ulaw = codec("pcmu")
    burst = ulaw.encode(tone(0.5, 300, 8000))
    audio = await decode_track(
        "inbound",
        records((8000, burst), (24000, burst)),
        codec=ulaw,
        rate=8000,
        frames=4 * 8000,
    )
    assert audio.track == "inbound"
    assert audio.duration_s == 4.0
    loud = np.abs(audio.samples) > 0.05
    seconds = np.flatnonzero(loud) / MODEL_RATE
    assert seconds.min() == pytest.approx(1.0, abs=0.01)
    assert seconds.max() == pytest.approx(3.5, abs=0.01)
    assert not loud[int(1.6 * MODEL_RATE) : int(2.9 * MODEL_RATE)].any()  # the gap
    assert audio.wipe() == 4 * MODEL_RATE * 4
    assert not audio.samples.any()
