"""When a call's audio is flushed, and how long it waited to be durable: the
``callvault_ingest_durable_seconds`` histogram (a fake clock, a fake upload), and each call's
flush phase, which spreads the flushes of calls started together over the interval."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics
from gateway.session import CallSession, SessionLimits, flush_phase
from gateway.trackwriter import TrackWriter
from storage.errors import StorageUnavailable
from tests.unit.test_session import NOW, FakeUpload, continued, session

METRIC = "callvault_ingest_durable_seconds"


class FakeClock:
    """Monotonic seconds that move only when told; counts its reads."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


class FsyncTakes(FakeUpload):
    """An upload whose fsync takes ``seconds`` on the fake clock; with ``gate``, it waits
    for the gate first (a flush in flight while more audio arrives)."""

    def __init__(self, clock: FakeClock, seconds: float, gate: asyncio.Event | None = None):
        super().__init__()
        self.clock, self.seconds, self.gate = clock, seconds, gate

    async def flush(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.clock.now += self.seconds
        await super().flush()


class FailingFsync(FakeUpload):
    async def flush(self) -> None:
        raise StorageUnavailable("EIO")

    async def abandon(self, *, now: datetime) -> None:
        pass


def durable_writer(clock: FakeClock, upload: FakeUpload) -> tuple[TrackWriter, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    track = TrackWriter(packets=False, position=0, clock=clock, durable=metrics.ingest_durable)
    track.upload = upload  # type: ignore[assignment]
    return track, registry


def observed(registry: CollectorRegistry) -> tuple[float, float]:
    """(count, sum) of the histogram."""
    count = registry.get_sample_value(f"{METRIC}_count")
    total = registry.get_sample_value(f"{METRIC}_sum")
    assert count is not None and total is not None
    return count, total


def bucket(registry: CollectorRegistry, le: str) -> float:
    value = registry.get_sample_value(f"{METRIC}_bucket", {"le": le})
    assert value is not None
    return value


async def test_a_flush_observes_its_oldest_frame_until_the_fsync_returned() -> None:
    clock = FakeClock()
    track, registry = durable_writer(clock, FsyncTakes(clock, seconds=0.3))
    for index in range(100):  # 2 s of 20 ms frames, the first at 1000.0
        track.append(index * 160, b"\xff" * 160, 160)
        clock.now += 0.02
    await track.flush(NOW)  # starts at 1002.0, its fsync returns at 1002.3
    assert observed(registry) == pytest.approx((1, 2.3))
    assert bucket(registry, "2.25") == 0 and bucket(registry, "2.5") == 1


async def test_the_clock_is_read_once_per_flush_not_per_frame() -> None:
    clock = FakeClock()
    track, registry = durable_writer(clock, FsyncTakes(clock, seconds=0.0))
    for index in range(500):
        track.append(index * 160, b"\xff" * 160, 160)
    track.skip(500 * 160 + 800)  # a paused stretch: a gap, no read
    track.append(track.position, b"\xff" * 160, 160)
    assert clock.reads == 1
    await track.flush(NOW)
    assert clock.reads == 2
    assert observed(registry) == (1, 0.0)


async def test_audio_placed_while_a_flush_is_in_flight_counts_from_its_own_arrival() -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    upload = FsyncTakes(clock, seconds=0.1, gate=gate)
    track, registry = durable_writer(clock, upload)
    track.append(0, b"a" * 160, 160)  # at 1000.0
    clock.now = 1001.0
    flushing = asyncio.create_task(track.flush(NOW))
    await asyncio.sleep(0)  # it took the first frame and waits for its fsync
    clock.now = 1001.5
    track.append(160, b"b" * 160, 160)  # at 1001.5: the oldest of the next flush
    gate.set()
    await flushing  # returns at 1001.6
    assert observed(registry) == pytest.approx((1, 1.6))
    clock.now = 1002.0
    await track.flush(NOW)  # returns at 1002.1
    assert observed(registry)[0] == 2
    assert observed(registry)[1] == pytest.approx(1.6 + 0.6)


async def test_flushes_without_audio_commits_and_failures_observe_nothing() -> None:
    clock = FakeClock()
    track, registry = durable_writer(clock, FsyncTakes(clock, seconds=0.1))
    await track.flush(NOW)  # nothing buffered
    track.append(0, b"a" * 160, 160)
    await track.commit(NOW)  # the call's end: waits on the store too, not counted
    assert observed(registry) == (0, 0)
    failing, registry = durable_writer(clock, FailingFsync())
    failing.append(0, b"a" * 160, 160)
    try:
        await failing.flush(NOW)
    except StorageUnavailable:
        pass
    assert observed(registry) == (0, 0)
    assert failing.since is None


# --- each call's flush phase ----------------------------------------------------------------

INTERVAL = timedelta(seconds=2)
FRAME = timedelta(milliseconds=20)


class Objects:
    """A vault whose every object is a fresh FakeUpload."""

    async def create_object(self, **_: Any) -> FakeUpload:
        return FakeUpload()


def live_call(call_id: str) -> CallSession:
    base = session()
    live = CallSession(
        call=replace(base.call, id=call_id),
        recording=base.recording,
        vault=Objects(),  # type: ignore[arg-type]
        limits=SessionLimits(flush_interval=INTERVAL),
        metrics=GatewayMetrics(None),
    )
    live.attach(NOW)
    return live


async def stream(
    calls: list[CallSession], frames: int, *, stall: tuple[int, int] | None = None
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Every call sends a 20 ms frame per tick from NOW (a burst of starts: all at once),
    flushing when ``place`` says so, as a connection's handler does. With ``stall=(i, n)``,
    the frames of ticks i..i+n-1 arrive together at tick i+n (the loop stalled). Per call:
    (flush time, arrival of the oldest frame it held) for every flush."""
    flushes: dict[str, list[tuple[datetime, datetime]]] = {c.call_id: [] for c in calls}
    oldest: dict[str, datetime | None] = {c.call_id: None for c in calls}
    for tick in range(frames):
        now = NOW + tick * FRAME
        if stall is not None and stall[0] <= tick < stall[0] + stall[1]:
            now = NOW + (stall[0] + stall[1]) * FRAME
        for live in calls:
            oldest[live.call_id] = oldest[live.call_id] or now
            if live.place(continued(), now):
                await live.flush_if_due(now, force=True)
                first = oldest[live.call_id]
                assert first is not None
                flushes[live.call_id].append((now, first))
                oldest[live.call_id] = None
    return flushes


def test_the_phase_comes_from_the_call_id_and_spreads_over_the_interval() -> None:
    assert flush_phase("CA0123") == flush_phase("CA0123")
    phases = [flush_phase(f"CA{index:032x}") for index in range(1000)]
    assert all(0 <= phase < 1 for phase in phases)
    tenths = Counter(int(phase * 10) for phase in phases)
    assert sorted(tenths) == list(range(10))
    assert max(tenths.values()) < 2 * min(tenths.values())


async def test_calls_started_together_spread_their_flushes_over_the_interval() -> None:
    calls = [live_call(f"CA{index:032x}") for index in range(200)]
    flushes = await stream(calls, frames=300)  # 6 s of audio, started at one instant
    every = [at for timed in flushes.values() for at, _ in timed]
    assert len(every) >= 200 * 2
    # By 100 ms slot of the interval: each holds about 1/20 of the flushes, none most.
    slots = Counter(((at - NOW) % INTERVAL) // timedelta(milliseconds=100) for at in every)
    assert len(slots) == 20
    assert max(slots.values()) < 3 * len(every) / 20


async def test_no_flush_waits_longer_than_the_interval_after_its_oldest_frame() -> None:
    """The promise of CALLVAULT_INGEST__FLUSH_INTERVAL: a crash loses at most the last
    interval's audio. The phase only ever brings a flush forward."""
    calls = [live_call(f"CA{index:032x}") for index in range(100)]
    flushes = await stream(calls, frames=400)
    for timed in flushes.values():
        assert timed
        for at, oldest in timed:
            assert at - oldest <= INTERVAL


async def test_a_stall_does_not_gather_the_calls_flushes_for_good() -> None:
    """After the loop stalled, the calls whose flushes came due meanwhile all flush when it
    ends; from then on each is back at its own phase, not bunched at the stall's end."""
    calls = [live_call(f"CA{index:032x}") for index in range(50)]
    flushes = await stream(calls, frames=500, stall=(150, 40))
    after = NOW + 200 * FRAME + INTERVAL  # a whole interval after the stall ended
    for live in calls:
        phase = INTERVAL * flush_phase(live.call_id)
        for at, _ in flushes[live.call_id]:
            if at >= after:
                # The first frame at or after its grid point (frames come every 20 ms).
                assert timedelta(0) <= (at - NOW - phase) % INTERVAL < FRAME


async def test_the_first_flush_comes_at_the_calls_phase() -> None:
    live = live_call("CA-one")
    phase = INTERVAL * flush_phase("CA-one")
    flushes = await stream([live], frames=100)
    first, _ = flushes["CA-one"][0]
    assert timedelta(0) <= first - (NOW + phase) < FRAME


class ClosingThenCancelled(FakeUpload):
    """A commit that closes the object, then is cancelled waiting for the catalog."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0
        self.abandoned = 0

    async def commit(self, *, now: datetime) -> Any:
        self.commits += 1
        if self.commits > 1:
            raise ValueError("the object is already closed")
        raise asyncio.CancelledError

    async def abandon(self, *, now: datetime) -> None:
        self.abandoned += 1


async def test_a_commit_cancelled_midway_is_never_tried_again() -> None:
    """Seen under load (100 calls started at once): a stream's handler cancelled while its
    call's commit waited for the catalog, then its release published the call, committing
    the closed object again (ValueError). The cancelled commit drops the upload instead."""
    upload = ClosingThenCancelled()
    track = TrackWriter(packets=False, position=0)
    track.upload = upload  # type: ignore[assignment]
    track.append(0, b"a" * 160, 160)
    with pytest.raises(asyncio.CancelledError):
        await track.commit(NOW)
    assert track.upload is None
    await track.commit(NOW)  # the release's publish: nothing left to commit
    assert upload.commits == 1
    # ... and handed to recovery, in a task of its own the cancellation did not stop.
    await asyncio.sleep(0)
    assert upload.abandoned == 1


async def test_the_ticker_flushes_a_quiet_call_only_once_its_flush_is_due() -> None:
    live = live_call("CA-quiet")
    due = NOW + INTERVAL * flush_phase("CA-quiet")
    live.place(continued(), NOW)
    await live.flush_if_due(due - timedelta(milliseconds=1))
    assert live.buffered() == 160
    await live.flush_if_due(due)
    assert live.buffered() == 0
