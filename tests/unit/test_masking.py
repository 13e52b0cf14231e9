"""The audio half of redaction, record by record: every codec keeps its timeline, the
masked stretch holds only the fill, and everything else is left as it was."""

from __future__ import annotations

from typing import Any

import av
import numpy as np
import pytest

from storage.media.codecs import codec
from storage.media.masking import TONE_HZ, Mask, TrackMasker
from storage.media.opus import OpusDecoder, packet_samples
from storage.media.tracks import TrackRecord


def speech(start: int, count: int) -> np.ndarray:
    """Loud, varied samples (never the fill)."""
    t = np.arange(start, start + count)
    return (np.sin(t / 3.1) * 9000 + np.sin(t / 17.0) * 5000).astype(np.int16)


def test_intervals_are_merged_sorted_and_clipped() -> None:
    mask = Mask.build([(30, 40), (5, 10), (8, 20), (-5, 2), (50, 50)], "silence", 8000)
    assert mask.intervals == ((0, 2), (5, 20), (30, 40))
    assert mask.overlapping(0, 100) == [(0, 2), (5, 20), (30, 40)]
    assert mask.overlapping(12, 35) == [(12, 20), (30, 35)]
    assert mask.overlapping(20, 30) == []


@pytest.mark.parametrize("name", ["pcmu", "pcma", "l16"])
@pytest.mark.parametrize("fill", ["silence", "tone"])
def test_sample_codecs_are_masked_in_place(name: str, fill: Any) -> None:
    c = codec(name)
    records = [TrackRecord(offset, c.encode(speech(offset, 1000))) for offset in (0, 1000, 3000)]
    mask = Mask.build([(800, 1200), (3500, 3600)], fill, 8000)
    masker = TrackMasker(c, mask)
    out = [piece for record in records for piece in masker.mask(record)]
    assert [r.offset for r in out] == [0, 1000, 3000]
    assert [len(r.payload) for r in out] == [len(r.payload) for r in records]
    assert masker.masked == 500
    before = np.concatenate([c.decode(r.payload) for r in records])
    after = np.concatenate([c.decode(r.payload) for r in out])
    timeline = np.r_[0:2000, 3000:4000]  # where the samples sit
    inside = ((timeline >= 800) & (timeline < 1200)) | ((timeline >= 3500) & (timeline < 3600))
    assert np.array_equal(after[~inside], before[~inside])
    assert np.abs(before[inside]).max() > 5000
    if fill == "silence":  # A-law has no zero: its silence is its smallest step, +-8
        assert np.abs(after[inside]).max() <= (8 if name == "pcma" else 0)
    else:
        stretch = after[(timeline >= 800) & (timeline < 1200)].astype(np.float64)
        expected = np.sin(2 * np.pi * TONE_HZ * np.arange(800, 1200) / 8000) * 0.25 * 32767
        # One tone across the record boundary at 1000, in phase with the timeline.
        assert np.corrcoef(stretch, expected)[0, 1] > 0.99


def test_an_untouched_record_is_the_same_object() -> None:
    c = codec("pcmu")
    record = TrackRecord(0, c.encode(speech(0, 100)))
    masker = TrackMasker(c, Mask.build([(500, 600)], "silence", 8000))
    assert masker.mask(record) == [record]
    assert masker.masked == 0


def opus_packets(count: int) -> list[TrackRecord]:
    context = av.CodecContext.create("libopus", "w")
    context.sample_rate = 48000
    context.layout = "mono"
    context.format = "s16"
    context.open()
    records: list[TrackRecord] = []
    offset = 0
    for i in range(count):
        frame = av.AudioFrame.from_ndarray(
            speech(i * 960, 960)[None, :], format="s16", layout="mono"
        )
        frame.sample_rate = 48000
        for packet in context.encode(frame):
            records.append(TrackRecord(offset, bytes(packet)))
            offset += packet_samples(bytes(packet))
    return records


def test_opus_packets_touching_a_stretch_are_replaced_whole() -> None:
    records = opus_packets(50)
    masker = TrackMasker(codec("opus"), Mask.build([(9700, 19000)], "silence", 48000))
    out = [piece for record in records for piece in masker.mask(record)]
    # The timeline is kept: the same offsets, each packet as long as the one it replaces.
    assert [r.offset for r in out] == [r.offset for r in records]
    assert [packet_samples(r.payload) for r in out] == [packet_samples(r.payload) for r in records]
    touched = [i for i, r in enumerate(records) if r.offset < 19000 and r.offset + 960 > 9700]
    assert masker.masked == 960 * len(touched)
    for i, (old, new) in enumerate(zip(records, out, strict=True)):
        assert (old.payload != new.payload) == (i in touched)
    decoded = np.concatenate([OpusDecoder().decode(r.payload) for r in out[touched[0] :]])
    # After the decoder settles on the new packets (one packet), the stretch is silent.
    assert np.abs(decoded[960 : 960 * (len(touched) - 1)]).max() < 50
