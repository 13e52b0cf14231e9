"""TrackWriter: how frames become records on a track's timeline (no I/O: a fake upload)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.session import MAX_RUN_BYTES, TrackWriter
from storage.errors import StorageUnavailable
from storage.media.tracks import RecordParser, TrackRecord

NOW = datetime(2026, 11, 28, tzinfo=UTC)


class FakeUpload:
    """Collects what a SealingUpload would seal; counts flushes and commits."""

    def __init__(self) -> None:
        self.plaintext = bytearray()
        self.flushes = 0
        self.committed = False

    async def write(self, data: bytes) -> None:
        self.plaintext += data

    async def flush(self) -> None:
        self.flushes += 1

    async def commit(self, *, now: datetime) -> Any:
        self.committed = True


def records(upload: FakeUpload) -> list[TrackRecord]:
    parser = RecordParser()
    found = parser.feed(bytes(upload.plaintext))
    parser.finish()
    return found


def writer(packets: bool = False, position: int = 0) -> tuple[TrackWriter, FakeUpload]:
    track = TrackWriter(packets=packets, position=position)
    upload = FakeUpload()
    track.upload = upload  # type: ignore[assignment]
    return track, upload


async def test_contiguous_frames_become_one_record() -> None:
    track, upload = writer()
    for index in range(5):
        track.append(index * 160, bytes([index]) * 160, 160)
    assert track.buffered == 800
    await track.flush(NOW)
    assert track.buffered == 0
    assert records(upload) == [TrackRecord(0, b"".join(bytes([i]) * 160 for i in range(5)))]
    assert upload.flushes == 1


async def test_a_gap_starts_a_new_record_at_its_offset() -> None:
    track, upload = writer()
    track.append(0, b"\x01\x00" * 160, 160)
    track.append(800, b"\x02\x00" * 160, 160)  # 640 samples of gap
    assert track.position == 960
    await track.commit(NOW)
    assert records(upload) == [
        TrackRecord(0, b"\x01\x00" * 160),
        TrackRecord(800, b"\x02\x00" * 160),
    ]
    assert upload.committed


async def test_skipped_audio_advances_the_timeline_and_is_never_written() -> None:
    track, upload = writer()
    track.append(0, b"a" * 160, 160)
    track.skip(480)  # two paused frames
    track.skip(400)  # never backwards
    assert track.position == 480
    track.append(track.position, b"b" * 160, 160)
    await track.flush(NOW)
    assert records(upload) == [TrackRecord(0, b"a" * 160), TrackRecord(480, b"b" * 160)]
    assert b"" not in {r.payload for r in records(upload)}


async def test_records_survive_several_flushes_in_order() -> None:
    track, upload = writer(position=1000)
    track.append(1000, b"x" * 160, 160)
    await track.flush(NOW)
    track.append(1160, b"y" * 160, 160)  # contiguous with the flushed run: a new record anyway
    await track.flush(NOW)
    assert records(upload) == [TrackRecord(1000, b"x" * 160), TrackRecord(1160, b"y" * 160)]


async def test_a_track_without_an_upload_flushes_and_commits_nothing() -> None:
    track = TrackWriter(packets=False, position=0)
    track.skip(8000)
    await track.flush(NOW)
    await track.commit(NOW)
    assert track.position == 8000


async def test_a_packet_codec_gets_one_record_per_packet() -> None:
    """Opus packets cannot be concatenated: each is its own record, even when contiguous."""
    track, upload = writer(packets=True)
    track.append(0, b"\x78\x01", 960)
    track.append(960, b"\x78\x02\x03", 960)
    assert track.position == 1920
    await track.flush(NOW)
    assert records(upload) == [TrackRecord(0, b"\x78\x01"), TrackRecord(960, b"\x78\x02\x03")]


class SlowFailingUpload(FakeUpload):
    """A write that waits for a gate, then fails (a disk error mid-flush)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event = asyncio.Event()
        self.abandoned = False

    async def write(self, data: bytes) -> None:
        await self.gate.wait()
        raise StorageUnavailable("disk error")

    async def abandon(self, *, now: datetime) -> None:
        self.abandoned = True


async def test_audio_placed_during_a_failing_flush_stays_buffered() -> None:
    """RTP places audio while a flush is in flight; if that flush fails, only what it took
    is lost (and was made durable up to the previous flush); the newer audio waits for the
    next object."""
    track = TrackWriter(packets=False, position=0)
    upload = SlowFailingUpload()
    track.upload = upload  # type: ignore[assignment]
    track.append(0, b"a" * 160, 160)
    flushing = asyncio.create_task(track.flush(NOW))
    await asyncio.sleep(0)  # the flush has taken the first run and waits in write()
    track.append(160, b"b" * 160, 160)
    upload.gate.set()
    with pytest.raises(StorageUnavailable):
        await flushing
    assert upload.abandoned and track.upload is None
    assert track.buffered == 160
    replacement = FakeUpload()
    track.upload = replacement  # type: ignore[assignment]
    await track.flush(NOW)
    assert records(replacement) == [TrackRecord(160, b"b" * 160)]


async def test_a_long_run_is_cut_into_records_far_below_the_record_limit() -> None:
    """A flush held up for long (RTP keeps placing audio meanwhile) must not build one
    record over the format's limit: runs are closed at MAX_RUN_BYTES."""
    track, upload = writer()
    chunk = b"z" * 65536
    for index in range(3 * MAX_RUN_BYTES // len(chunk)):
        track.append(index * len(chunk), chunk, len(chunk))
    await track.flush(NOW)
    found = records(upload)
    assert [len(r.payload) for r in found] == [MAX_RUN_BYTES] * 3
    assert [r.offset for r in found] == [0, MAX_RUN_BYTES, 2 * MAX_RUN_BYTES]
