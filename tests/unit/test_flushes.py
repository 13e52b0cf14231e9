"""When a call's audio is flushed, and how long it waited to be durable: the
``callvault_ingest_durable_seconds`` histogram (a fake clock, a fake upload), and each call's
flush phase, which spreads the flushes of calls started together over the interval."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics
from gateway.session import TrackWriter
from storage.errors import StorageUnavailable
from tests.unit.test_session import NOW, FakeUpload

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
