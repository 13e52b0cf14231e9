"""TrackWriter: how frames become records on a track's timeline (no I/O: a fake upload); and
CallSession.place: where frames land, and that none lands past the call's maximum duration."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.errors import MaxDurationReached
from gateway.ingest.events import Audio, Track
from gateway.metrics import GatewayMetrics
from gateway.session import MAX_HELD_FLUSHES, MAX_JUMP_S, CallSession, SessionLimits
from gateway.trackwriter import MAX_RUN_BYTES, TrackWriter
from storage.catalog import Call, Recording
from storage.errors import CatalogUnavailable, StorageUnavailable
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


# --- CallSession.place: the call's maximum duration ----------------------------------------

LIMIT_S = 2
RATE = 8000


def session(
    codec: str = "pcmu",
    *,
    max_duration_s: float = LIMIT_S,
    transport: str = "twilio",
    flush_bytes: int = SessionLimits().flush_bytes,
    at: datetime = NOW,
    attach: bool = True,
) -> CallSession:
    """A live session of a call (no I/O: ``place`` never touches the vault), started and
    (with ``attach``) attached at ``at``."""
    call = Call(
        tenant_id="acme",
        id="call-1",
        from_number="+40711111111",
        to_number="+40722222222",
        direction="inbound",
        consent="granted",
        transport=transport,
        codec=codec,
        sample_rate=48_000 if codec == "opus" else RATE,
        instructions_version=1,
        decision={"store_recording": True, "ai": []},
        refusal_code=None,
        started_at=at,
        ended_at=None,
    )
    recording = Recording(
        id="rec-1",
        tenant_id="acme",
        call_id="call-1",
        status="recording",
        instructions_version=1,
        created_at=at,
        ended_at=None,
        audio_purged=False,
        failure_reason=None,
        deleted_at=None,
        delete_reason=None,
    )
    live = CallSession(
        call=call,
        recording=recording,
        vault=None,  # type: ignore[arg-type]
        limits=SessionLimits(
            flush_bytes=flush_bytes, max_duration=timedelta(seconds=max_duration_s)
        ),
        metrics=GatewayMetrics(None),
    )
    if attach:
        live.attach(at)
    return live


def stamped(timestamp_ms: int, track: Track = "inbound", size: int = 160) -> Audio:
    return Audio(track, b"\xff" * size, timestamp_ms, None)


def continued(track: Track = "inbound", size: int = 160) -> Audio:
    return Audio(track, b"\xff" * size, None, None)


def test_timestamp_jumps_cannot_stretch_a_track_past_the_limit() -> None:
    """Each jump is under MAX_JUMP_S, so none is refused as a bad timestamp; the frame that
    would land past the limit is, naming its timestamp, track and the limit, and nothing of
    it is placed."""
    live = session(max_duration_s=3 * MAX_JUMP_S)
    for step in range(3):
        live.place(stamped(step * MAX_JUMP_S * 1000), NOW)
    assert live.tracks["inbound"].position == (2 * MAX_JUMP_S) * RATE + 160
    with pytest.raises(MaxDurationReached) as refused:
        live.place(stamped(3 * MAX_JUMP_S * 1000), NOW)
    error = refused.value
    assert (error.code, error.close_code) == ("max_duration", 1007)
    assert "media.timestamp 1800000" in error.message
    assert "inbound" in error.message
    assert f"maximum duration of {3 * MAX_JUMP_S} s" in error.message
    assert "CALLVAULT_CALLS__MAX_DURATION" in error.message
    assert live.tracks["inbound"].position == (2 * MAX_JUMP_S) * RATE + 160
    assert live.timeline_end() <= 3 * MAX_JUMP_S * RATE
    assert live.closing == "max_duration"


def test_the_issues_thousand_jumping_frames_stop_at_the_default_four_hours() -> None:
    """The attack as filed: 160-byte frames whose timestamps jump 600 s each (a thousand of
    them once made a 166-hour track). With the default limit (PT4H) the 25th frame, which
    would end past 4 h, is refused; the track never reaches the limit, let alone 166 h."""
    live = session(max_duration_s=SessionLimits().max_duration.total_seconds())
    placed = 0
    with pytest.raises(MaxDurationReached):
        for frame in range(1000):
            live.place(stamped(frame * MAX_JUMP_S * 1000), NOW)
            placed += 1
    assert placed == 4 * 3600 // MAX_JUMP_S  # 24 frames: 0 s ... 13800 s
    assert live.timeline_end() == (placed - 1) * MAX_JUMP_S * RATE + 160 <= 4 * 3600 * RATE


def test_the_frame_ending_exactly_at_the_limit_is_kept_and_the_next_refused() -> None:
    live = session()
    frames = LIMIT_S * RATE // 160
    for _ in range(frames):
        live.place(continued(), NOW)
    assert live.tracks["inbound"].position == LIMIT_S * RATE  # the last one ends at the limit
    assert live.tracks["inbound"].buffered == LIMIT_S * RATE
    with pytest.raises(MaxDurationReached, match="would lie at 2.000-2.020 s"):
        live.place(continued(), NOW)
    assert live.tracks["inbound"].buffered == LIMIT_S * RATE  # nothing of it was taken
    # The other track is bounded by the same call-wide limit, and the call is ending: any
    # later frame meets max_duration too, so its PBX learns why.
    with pytest.raises(MaxDurationReached):
        live.place(continued("outbound"), NOW)
    assert "outbound" not in live.tracks or not live.tracks["outbound"].buffered


def test_a_frame_straddling_the_limit_is_refused_whole() -> None:
    """A frame that would end past the limit is refused whole (a codec packet cannot be
    cut): the track ends before the limit, never after it."""
    live = session()
    live.place(stamped(0), NOW)
    with pytest.raises(MaxDurationReached, match=r"at 1.990-2.010 s"):
        live.place(stamped(LIMIT_S * 1000 - 10), NOW)
    assert live.timeline_end() == 160


def test_a_timestamp_placing_the_first_frame_past_the_limit_is_refused() -> None:
    live = session()
    with pytest.raises(MaxDurationReached, match=r"media.timestamp 2000 places the inbound"):
        live.place(stamped(LIMIT_S * 1000), NOW)
    assert live.timeline_end() == 0


def test_paused_frames_cannot_pass_the_limit_either() -> None:
    """Discarded while paused, they still advance the timeline; past the limit they are
    refused like any other."""
    live = session()
    live.paused = True
    for _ in range(LIMIT_S * RATE // 160):
        live.place(continued(), NOW)
    with pytest.raises(MaxDurationReached):
        live.place(continued(), NOW)
    assert live.timeline_end() == LIMIT_S * RATE


def test_an_rtp_offset_past_the_limit_is_refused() -> None:
    live = session()
    live.place(Audio("inbound", b"\xff" * 160, None, 1, offset=LIMIT_S * RATE - 160), NOW)
    with pytest.raises(MaxDurationReached):
        live.place(Audio("inbound", b"\xff" * 160, None, 2, offset=LIMIT_S * RATE - 80), NOW)
    assert live.timeline_end() == LIMIT_S * RATE


def test_faster_than_real_time_is_allowed_up_to_the_limit() -> None:
    """The bound is on the timeline, not on the pace: the whole limit may arrive at one
    instant (a replay)."""
    live = session()
    for _ in range(LIMIT_S * RATE // 160):
        live.place(continued(), NOW)
    assert live.expiry(NOW) is None
    assert live.timeline_end() == LIMIT_S * RATE


def test_the_wall_clock_since_the_first_stream_ends_the_call_at_the_limit() -> None:
    live = session()
    live.place(continued(), NOW)
    assert live.expiry(NOW + timedelta(seconds=LIMIT_S) - timedelta(microseconds=1)) is None
    assert live.expiry(NOW + timedelta(seconds=LIMIT_S)) == "max_duration"
    live.detach(NOW + timedelta(seconds=1))  # waiting for a reconnect does not stop it
    assert live.expiry(NOW + timedelta(seconds=LIMIT_S)) == "max_duration"


# --- CallSession.receive: which flush failures a stream survives ----------------------------


class DiskFullUpload(SlowFailingUpload):
    """The spool's write fails at once (disk full): the audio it was given is lost."""

    async def write(self, data: bytes) -> None:
        raise StorageUnavailable("No space left on device")


class Vault:
    """A vault whose objects open on ``upload`` or fail with ``refuse``."""

    def __init__(self, upload: FakeUpload | None = None, refuse: Exception | None = None):
        self.upload, self.refuse, self.opened = upload, refuse, 0

    async def create_object(self, **_: Any) -> FakeUpload:
        self.opened += 1
        if self.refuse is not None:
            raise self.refuse
        assert self.upload is not None
        return self.upload


def flushing_session(vault: Vault) -> CallSession:
    live = session(max_duration_s=60)
    live._vault = vault  # type: ignore[assignment]
    live._limits = SessionLimits(flush_interval=timedelta(0), flush_bytes=320)
    live._flush_at = None  # the attach planned its first flush on the default interval
    return live


async def test_a_spool_write_that_fails_closes_the_stream_at_once() -> None:
    # The flush took the audio before its write failed: going on would lose every flush.
    upload = DiskFullUpload()
    live = flushing_session(Vault(upload))
    with pytest.raises(StorageUnavailable):
        await live.receive(continued(), NOW)
    assert upload.abandoned and live.buffered() == 0


async def test_a_catalog_outage_holds_the_audio_until_the_bound() -> None:
    vault = Vault(refuse=CatalogUnavailable("the catalog is down"))
    live = flushing_session(vault)
    held = MAX_HELD_FLUSHES * 320 // 160
    for _ in range(held - 1):
        await live.receive(continued(), NOW)  # nothing taken: the stream goes on
    assert live.buffered() == (held - 1) * 160
    with pytest.raises(CatalogUnavailable):
        await live.receive(continued(), NOW)
    assert vault.opened == held
    vault.refuse, vault.upload = None, FakeUpload()
    await live.flush_if_due(NOW, force=True)
    assert records(vault.upload) == [TrackRecord(0, b"\xff" * held * 160)]
