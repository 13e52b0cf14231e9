"""One track of a live call: the audio not yet sealed, as records of contiguous runs, and its
sealing upload.

Split from ``gateway.session`` (which decides where each frame lands and when to flush):
this is only the buffer and the push of its bytes to the vault, the part every frame
touches (``append``) and every flush (``flush``/``commit``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

from prometheus_client import Histogram

from crypto.errors import CallvaultError
from storage.media.tracks import encode_record
from storage.vault import SealingUpload

log = logging.getLogger(__name__)

MAX_RUN_BYTES = 1024 * 1024
"""A run of contiguous audio is closed into a record at this size, so that a record stays
far below ``storage.media.tracks.MAX_RECORD_PAYLOAD`` however long a flush is held up."""


class TrackWriter:
    """One track of one call: the run of audio not yet sealed, and its sealing upload (opened
    by the first flush that has audio to seal, so a track heard only while paused stores
    nothing).

    ``clock`` (monotonic seconds) is read when the buffer goes from empty to holding audio
    and when a flush's fsync returns, never per frame: each flush observes how long its
    oldest frame waited to be durable (``callvault_ingest_durable_seconds``)."""

    def __init__(
        self,
        *,
        packets: bool,
        position: int,
        clock: Callable[[], float] = time.monotonic,
        durable: Histogram | None = None,
    ) -> None:
        self.upload: SealingUpload | None = None
        self._clock = clock
        self._durable = durable
        self.since: float | None = None
        """When the oldest frame still buffered arrived (``clock``); ``None`` while empty."""
        self._packets = packets
        """Each payload is a packet (Opus) and gets a record of its own."""
        self.position = position
        """The sample just after the last one received (stored or discarded)."""
        self._run_offset = position
        self._run = bytearray()
        self._records = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._run) + len(self._records)

    def append(self, offset: int, payload: bytes, samples: int) -> None:
        """Add ``payload`` (``samples`` long) at ``offset`` (>= ``position``); contiguous
        audio extends the current run, a gap (or a packet codec) starts a new record."""
        if self._run and (
            self._packets or offset != self.position or len(self._run) >= MAX_RUN_BYTES
        ):
            self._close_run()
        if not self._run:
            self._run_offset = offset
            if not self._records:  # empty until now: this is the oldest frame buffered
                self.since = self._clock()
        self._run += payload
        self.position = offset + samples

    def skip(self, until: int) -> None:
        """Advance the timeline to ``until`` without storing anything (paused audio)."""
        if until > self.position:
            self._close_run()
            self.position = until

    def _close_run(self) -> None:
        if self._run:
            self._records += encode_record(self._run_offset, self._run)
            self._run = bytearray()

    def _take(self) -> bytearray:
        self._close_run()
        data, self._records = self._records, bytearray()  # handed over, not copied
        self.since = None
        return data

    async def flush(self, now: datetime) -> None:
        """Seal what is buffered and make it durable (the spool's fsync)."""
        await self._push(now, commit=False)

    async def commit(self, now: datetime) -> None:
        """Seal the rest and publish the object; afterwards the track has no upload (more
        audio would open a new object). On failure the object is left for recovery."""
        await self._push(now, commit=True)

    async def _push(self, now: datetime, *, commit: bool) -> None:
        if self.upload is None:
            return
        # Taken before the first await: audio placed while the write is in flight (RTP
        # places without waiting for flushes) stays buffered for the next one.
        since = self.since
        data = self._take()
        try:
            if data:
                await self.upload.write(data)
            if commit:
                await self.upload.commit(now=now)
            else:
                await self.upload.flush()
        except CallvaultError:
            await self.abandon(now)
            raise
        except BaseException:
            if commit:
                # Cancelled mid-commit (its handler's task, under load): the object may be
                # closed already, so it is never committed twice. It goes to recovery as a
                # failed one does: its spool file closed and released for the publisher to
                # publish (or, committed meanwhile, to discard), in a task of its own that
                # the cancellation cannot stop.
                upload, self.upload = self.upload, None
                if upload is not None:
                    _hand_over(upload, now)
            raise
        if commit:
            self.upload = None
        elif data and since is not None and self._durable is not None:
            # A commit (the call's end, a publish) is not counted: it waits on the store too.
            self._durable.observe(self._clock() - since)

    async def discard(self, now: datetime) -> None:
        """Keep nothing more of this track: the audio still buffered is dropped and the
        upload abandoned (its tenant is deleted)."""
        self._take()
        await self.abandon(now)

    async def abandon(self, now: datetime) -> None:
        """Drop a failed upload; what it made durable stays in the spool for recovery, and
        the track's audio still buffered goes to a new object, opened by the next flush."""
        upload, self.upload = self.upload, None
        if upload is not None:
            try:
                await upload.abandon(now=now)
            except CallvaultError as e:
                log.warning("a failed upload could not be closed cleanly: %s", e.code)


_HANDOVERS: set[asyncio.Task[None]] = set()
"""Uploads of cancelled commits being handed to recovery (held so they are not collected)."""


def _hand_over(upload: SealingUpload, now: datetime) -> None:
    async def abandon() -> None:
        try:
            await upload.abandon(now=now)
        except CallvaultError as e:
            log.warning("a cancelled commit's upload could not be closed cleanly: %s", e.code)

    try:
        task = asyncio.get_running_loop().create_task(abandon())
    except RuntimeError:  # no loop any more (the process is ending): recovery at next start
        return
    _HANDOVERS.add(task)
    task.add_done_callback(_HANDOVERS.discard)
