"""The AI worker: takes ``analyze`` jobs from the catalog's queue and sees each one through.

For one finished call that had an AI feature instructed: read each track's sealed audio as a
stream (``ai.audio``: decrypted, decoded and resampled block by block, never a whole long
track in memory), transcribe and analyse it in windows (``ai.pipeline``),
seal the transcript and the analysis with the tenant's keys as their own objects (data
class ``transcripts``, so their own retention window), then purge: the in-memory copies of
the audio are overwritten, and for a call whose instructions allowed AI but not recording
the audio objects are crypto-shredded (DEK first, then the bytes) and the recording becomes
transcript-only. ``ai.purged`` in the tenant's audit log records what was purged.

Jobs are leased (``catalog.jobs.claim``); the lease is renewed while a job runs, so a worker
that dies loses it within one lease and another worker takes the job up. Every step is
written so that an attempt killed anywhere is finished by the next one without duplicates:
a complete set of results left by a killed attempt is kept and only the purge is finished;
a partial set is shredded and the analysis redone. The recording becomes ``analyzed`` last,
after the purge, so nobody sees an analyzed AI-only call whose audio still exists.

With ``ai.redaction`` instructed, the transcript is redacted before the features run
(``ai.pipeline``), and with ``ai.redaction.audio`` the recording's audio is rewritten
without the spans and the originals shredded (``ai.audioredaction``) before the recording
becomes ``analyzed``; an attempt that finds the results stored by a killed one takes the
spans from them and finishes the swap.

A failing attempt is retried with exponential backoff; after the last one the recording is
``failed`` with the reason (and the audio of an AI-only call is purged all the same:
nothing was instructed to keep it).

A job whose audio is still in a gateway's spool waits (``AudioNotPublished``, no attempt
counted) while that node is up; if the node is away (declared dead, stopped, or silent
past ``CALLVAULT_NODE__DEAD_AFTER``) the job fails at once with a reason naming the node,
and nothing is purged: the node publishes that audio and reopens the job when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from ai.audio import TrackSource
from ai.audioredaction import AudioRedaction
from ai.pipeline import ANALYSIS_FEATURES, Analysis, Analyzer
from ai.redaction.redact import Span
from ai.transcript import TRACKS
from crypto.errors import CallvaultError
from storage.catalog import Call, Catalog, Job, Recording, RecordingStatus, StoredObject
from storage.errors import CatalogUnavailable, Conflict, NotFound
from storage.instructions import InstructionsDoc, parse_stored_instructions
from storage.media.codecs import codec
from storage.media.tracks import AUDIO_KIND, TrackRecord, track_records
from storage.redactionrules import RedactionRule
from storage.vault import MediaVault

log = logging.getLogger(__name__)

ANALYZE_JOB = "analyze"
TRANSCRIPT_KIND = "transcript"
ANALYSIS_KIND = "analysis"
ORIGINAL_TRANSCRIPT_KIND = "transcript.original"
"""The unredacted transcript, kept only when ``ai.redaction.keep_original`` says so."""
RESULT_KINDS = (TRANSCRIPT_KIND, ANALYSIS_KIND, ORIGINAL_TRANSCRIPT_KIND)
ACTOR = "ai-worker"
PUBLISH_WAIT = timedelta(seconds=30)
"""How long a job waits when part of its audio is still in a spool (its commit failed)."""
PUBLISH_GIVE_UP = timedelta(hours=6)
"""A job whose audio has not been published after this long fails."""


class Notify(Protocol):
    """Queues a webhook event (``gateway.webhooks.queue_event`` bound to the catalog)."""

    def __call__(
        self,
        *,
        tenant: str,
        event: str,
        data: dict[str, Any],
        now: datetime,
        recording_id: str,
        event_id: str,
    ) -> Awaitable[Any]: ...


class AudioNotPublished(CallvaultError):
    """Part of the call's audio is still in a node's spool: the job waits, it is no failure
    (unless that node is away: then it fails at once, to be reopened when the node is
    back). ``nodes``: the nodes whose spools hold it, as the catalog knows them."""

    def __init__(self, message: str, *, nodes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.nodes = nodes


class LeaseLost(Conflict):
    """This worker no longer holds the job's lease: another worker may be running it, so
    this attempt must write nothing more."""


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.jobs = Counter(
            "callvault_ai_jobs",
            "AI jobs by outcome (analyzed, retry, failed, deferred, node_away, skipped).",
            ["outcome"],
            registry=registry,
        )
        self.audio_seconds = Counter(
            "callvault_ai_audio_seconds",
            "Seconds of call audio (per track) analysed.",
            registry=registry,
        )
        self.job_seconds = Histogram(
            "callvault_ai_job_seconds",
            "Wall time of one analysis, decrypt to sealed results.",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=registry,
        )


def default_owner() -> str:
    """A worker's lease name: host, process and a random suffix (unique per worker)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class AnalysisWorker:
    def __init__(
        self,
        *,
        catalog: Catalog,
        vault: MediaVault,
        analyzer: Analyzer,
        now: Callable[[], datetime],
        owner: str | None = None,
        lease: timedelta = timedelta(seconds=60),
        poll_interval: timedelta = timedelta(seconds=1),
        retry_backoff: timedelta = timedelta(seconds=30),
        notify: Notify | None = None,
        metrics: WorkerMetrics | None = None,
        node_dead_after: timedelta = timedelta(seconds=30),
    ) -> None:
        """``node_dead_after``: a node whose heartbeat is older than this is away, and a
        job whose audio waits in its spool fails at once (``CALLVAULT_NODE__DEAD_AFTER``)."""
        self._catalog = catalog
        self._vault = vault
        self._analyzer = analyzer
        self._now = now
        self.owner = owner or default_owner()
        self._lease = lease
        self._poll = poll_interval.total_seconds()
        self._backoff = retry_backoff
        self._notify = notify
        self.metrics = metrics or WorkerMetrics(None)
        self._node_dead_after = node_dead_after
        self._audio = AudioRedaction(catalog=catalog, vault=vault, actor=ACTOR)

    async def load(self) -> str:
        """Load the model now rather than at the first job; its name."""
        return await self._analyzer.load()

    async def close(self) -> None:
        await self._analyzer.close()

    async def run(self) -> None:
        """Take jobs until cancelled; idle, look again every poll interval."""
        while True:
            try:
                worked = await self.run_once()
            except asyncio.CancelledError:
                raise
            except CatalogUnavailable as e:  # expected while it is down: no traceback a poll
                log.warning("AI worker %s: taking a job failed: %s", self.owner, e.code)
                worked = False
            except Exception:  # the worker must outlive any one failure
                log.exception("AI worker %s: taking a job failed", self.owner)
                worked = False
            if not worked:
                await asyncio.sleep(self._poll)

    async def run_once(self) -> bool:
        """Claim one due job and see it through; False when none was due."""
        job = await self._catalog.jobs.claim(
            self.owner, self._now(), self._lease, kinds=[ANALYZE_JOB], hand_out_exhausted=True
        )
        if job is None:
            return False
        heartbeat = asyncio.create_task(self._heartbeat(job), name=f"lease-{job.id}")
        work = asyncio.create_task(self._attempt(job), name=f"analyze-{job.id}")
        try:
            done, _ = await asyncio.wait({heartbeat, work}, return_when=asyncio.FIRST_COMPLETED)
            if heartbeat in done and work not in done:
                # The lease was lost (another worker has the job): stop, write nothing more.
                log.warning("AI job %s: lease lost, attempt abandoned", job.id)
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                return True
            await work
        finally:
            for task in (heartbeat, work):
                task.cancel()
            await asyncio.gather(heartbeat, work, return_exceptions=True)
        return True

    async def _heartbeat(self, job: Job) -> None:
        interval = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._catalog.jobs.renew_lease(job.id, self.owner, self._now(), self._lease)
            except (Conflict, NotFound):
                return
            except CallvaultError as e:  # the catalog is down: keep working, try again
                log.warning("AI job %s: lease not renewed: %s", job.id, e.code)

    async def _attempt(self, job: Job) -> None:
        try:
            await self._attempt_leased(job)
        except LeaseLost:
            log.warning("AI job %s: lease lost, attempt abandoned", job.id)
            self.metrics.jobs.labels("lease_lost").inc()

    async def _attempt_leased(self, job: Job) -> None:
        started = time.perf_counter()
        if job.attempts > job.max_attempts:
            # The worker of the last attempt died (its lease ran out): nobody recorded the
            # failure or purged the audio, so that is this claim's whole work.
            await self._give_up(
                job, job.last_error or "the worker of the last attempt stopped mid-job"
            )
            return
        try:
            outcome = await self._process(job)
        except LeaseLost:
            raise
        except AudioNotPublished as e:
            now = self._now()
            if await self._fail_if_node_away(job, e.nodes, now):
                return
            if now - job.created_at > PUBLISH_GIVE_UP:
                await self._give_up(job, e.message)
                return
            await self._catalog.jobs.defer(
                job.id, self.owner, e.message, now, run_after=now + PUBLISH_WAIT
            )
            self.metrics.jobs.labels("deferred").inc()
            return
        except asyncio.CancelledError:
            # Stopped (SIGTERM) or the lease was lost: hand the job back uncounted; with a
            # lost lease the catalog refuses, which is right (another worker has it).
            now = self._now()
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._catalog.jobs.defer(
                        job.id, self.owner, "worker stopped", now, run_after=now
                    )
                )
            raise
        except Exception as e:
            reason = _reason(e)
            log.warning(
                "AI job %s (recording %s) attempt %d failed: %s",
                job.id,
                job.recording_id,
                job.attempts,
                reason,
                extra={"tenant": job.tenant_id, "job": job.id},
            )
            if job.attempts < job.max_attempts:
                delay = self._backoff * (2 ** (job.attempts - 1))
                await self._catalog.jobs.fail(
                    job.id, self.owner, reason, self._now(), retry_at=self._now() + delay
                )
                self.metrics.jobs.labels("retry").inc()
            else:
                await self._give_up(job, reason)
            return
        elapsed = time.perf_counter() - started
        self.metrics.job_seconds.observe(elapsed)
        self.metrics.jobs.labels(outcome).inc()
        await self._catalog.jobs.complete(job.id, self.owner, self._now())
        log.info(
            "AI job %s (recording %s): %s in %.1f s, attempt %d",
            job.id,
            job.recording_id,
            outcome,
            elapsed,
            job.attempts,
            extra={"tenant": job.tenant_id, "job": job.id, "outcome": outcome},
        )

    async def _fail_if_node_away(self, job: Job, nodes: tuple[str, ...], now: datetime) -> bool:
        """The audio waits in the spool of a node that is away (declared dead, stopped, or
        silent past ``node_dead_after``): fail the job at once, naming the node, without
        counting the attempt and without purging anything, since that node publishes the
        audio when it is back and reopens the job then (``storage.catalog.nodes``). ``True``
        if it was failed so."""
        for node_id in nodes:
            try:
                failed = await self._catalog.nodes.fail_waiting(
                    job, node_id, now, dead_after=self._node_dead_after, owner=self.owner
                )
            except Conflict:
                raise LeaseLost(f"job {job.id} is no longer leased to {self.owner}") from None
            if failed is not None:
                log.warning(
                    "AI job %s (recording %s) failed at once: %s",
                    job.id,
                    job.recording_id,
                    failed.last_error,
                    extra={"tenant": job.tenant_id, "job": job.id},
                )
                self.metrics.jobs.labels("node_away").inc()
                return True
        return False

    async def _give_up(self, job: Job, reason: str) -> None:
        """The last attempt failed: the recording is ``failed`` with the reason (and purged),
        then the job. If recording it fails (the catalog is down), the job stays leased, its
        lease runs out, and the next claim of it comes back here."""
        if job.recording_id is not None:
            try:
                recording, call = await self._catalog.recordings.get_entry(
                    job.tenant_id, job.recording_id
                )
            except NotFound:  # erased meanwhile
                pass
            else:
                if recording.status in ("processing", "failed"):
                    await self._finish(
                        job, recording, call, "failed", wiped=0, failure_reason=reason
                    )
        await self._catalog.jobs.fail(job.id, self.owner, reason, self._now())
        self.metrics.jobs.labels("failed").inc()

    async def _process(self, job: Job) -> str:
        if job.recording_id is None:
            return "skipped"
        try:
            recording, call = await self._catalog.recordings.get_entry(
                job.tenant_id, job.recording_id
            )
        except NotFound:  # erased meanwhile (or its tenant deleted)
            return "skipped"
        if recording.status != "processing":  # analyzed (done), deleted, or never for AI
            return "skipped"
        objects = await self._catalog.objects.list(job.tenant_id, recording_id=recording.id)
        waiting = [o for o in objects if o.kind == AUDIO_KIND and o.state == "writing"]
        if waiting:
            raise AudioNotPublished(
                f"the audio of recording {recording.id} is still being published from a spool",
                nodes=tuple(sorted({o.node_id for o in waiting if o.node_id is not None})),
            )
        features = tuple(call.decision.get("ai", ()))
        instructions = parse_stored_instructions(
            (
                await self._catalog.instructions.get(
                    recording.tenant_id, recording.instructions_version
                )
            ).document
        )
        results = [o for o in objects if o.kind in RESULT_KINDS and o.state != "deleted"]
        wiped = 0
        spans: list[Span] | None = None
        redaction = instructions.ai.redaction
        expected = expected_results(features, keep_original=_keeps_original(redaction))
        if sorted((o.kind, o.state) for o in results) != expected:
            # Anything a killed attempt left half-done is shredded; the new results replace
            # it, never duplicate it. (A complete set is kept: that attempt died after
            # storing, maybe while purging the audio it needed, so it is not redone.)
            for leftover in results:
                await self._vault.shred_object(job.tenant_id, leftover.id, now=self._now())
            analysis = await self._analyse(job, recording, call, features, objects, instructions)
            wiped = analysis.working_copy_bytes
            spans = list(analysis.redacted)
        if redaction.audio and call.decision.get("store_recording"):
            if spans is None:  # a killed attempt stored the results: its spans are in them
                spans = await self._stored_spans(recording, results)
            if spans:  # the swap fences the lease itself, before each step that destroys
                await self._audio.redact(
                    recording,
                    call,
                    spans,
                    redaction,
                    now=self._now(),
                    fence=lambda: self._fence(job),
                )
        await self._finish(job, recording, call, "analyzed", wiped=wiped)
        return "analyzed"

    async def _stored_spans(self, recording: Recording, results: list[StoredObject]) -> list[Span]:
        """The redacted spans a stored transcript or analysis lists."""
        for stored in results:
            document = orjson.loads(await self._vault.read_object(recording.tenant_id, stored.id))
            if "redaction" in document:
                return [Span.from_view(e) for e in document["redaction"]["entities"]]
        return []

    async def _fence(self, job: Job) -> None:
        """Renew the lease before a step that writes, or stop with ``LeaseLost``: a worker
        that stalled past its lease must not write beside the worker that took over."""
        try:
            await self._catalog.jobs.renew_lease(job.id, self.owner, self._now(), self._lease)
        except (Conflict, NotFound):
            raise LeaseLost(f"job {job.id} is no longer leased to {self.owner}") from None

    async def _analyse(
        self,
        job: Job,
        recording: Recording,
        call: Call,
        features: tuple[str, ...],
        objects: list[StoredObject],
        instructions: InstructionsDoc,
    ) -> Analysis:
        """Decode, transcribe, analyse and seal the results (the working copies of the
        audio are overwritten before this returns, also when it fails)."""
        tracks = self._sources(recording, call, objects)
        analysis = await self._analyzer.analyse(
            tracks,
            features=features,
            language=instructions.ai.language,
            categories=instructions.ai.categories,
            duration_s=(recording.samples or 0) / call.sample_rate,
            redaction=instructions.ai.redaction,
        )
        self.metrics.audio_seconds.inc(sum(t.duration_s for t in tracks))
        await self._fence(job)
        await self._store(recording, features, analysis)
        return analysis

    def _sources(
        self, recording: Recording, call: Call, objects: list[StoredObject]
    ) -> list[TrackSource]:
        """Each track with committed audio, as a source the analysis reads (and may read
        again): its objects' verified plaintext streams, opened afresh for each read."""
        sources = []
        for name in TRACKS:
            parts = [
                o.id
                for o in objects
                if o.kind == AUDIO_KIND and o.track == name and o.state == "committed"
            ]
            if not parts:
                continue

            async def records(parts: list[str] = parts) -> AsyncIterator[TrackRecord]:
                streams = [await self._vault.open_object(recording.tenant_id, p) for p in parts]
                return track_records(streams)

            sources.append(
                TrackSource(
                    track=name,
                    codec=codec(call.codec),
                    rate=call.sample_rate,
                    frames=recording.samples or 0,
                    records=records,
                )
            )
        return sources

    async def _store(
        self, recording: Recording, features: tuple[str, ...], result: Analysis
    ) -> None:
        now = self._now()
        if "transcript" in features:
            transcript = result.transcript.view()
            if "redaction" in result.document:
                transcript["redaction"] = result.document["redaction"]
            await self._vault.put_object(
                orjson.dumps(transcript),
                tenant=recording.tenant_id,
                kind=TRANSCRIPT_KIND,
                data_class="transcripts",
                now=now,
                recording_id=recording.id,
            )
            if result.original is not None:
                await self._vault.put_object(
                    orjson.dumps(result.original.view()),
                    tenant=recording.tenant_id,
                    kind=ORIGINAL_TRANSCRIPT_KIND,
                    data_class="transcripts",
                    now=now,
                    recording_id=recording.id,
                )
        if any(feature in features for feature in ANALYSIS_FEATURES):
            document = {
                "language": result.transcript.language,
                "model": result.transcript.model,
                "duration_s": round(result.transcript.duration_s, 3),
                **result.document,
            }
            await self._vault.put_object(
                orjson.dumps(document),
                tenant=recording.tenant_id,
                kind=ANALYSIS_KIND,
                data_class="transcripts",
                now=now,
                recording_id=recording.id,
            )

    async def _finish(
        self,
        job: Job,
        recording: Recording,
        call: Call,
        status: RecordingStatus,
        *,
        wiped: int,
        failure_reason: str | None = None,
    ) -> None:
        """Purge, audit the purge, queue the webhook event, then move the recording to
        ``status``, in that order: a reader never sees an analyzed AI-only recording whose
        audio still exists, and a crash anywhere in between is finished by the retry
        (shredding is idempotent; the event's id comes from the job, so queueing it again
        is a no-op; at worst the purge is audited twice, never not at all).

        Always purged: the in-memory copies (already overwritten: ``wiped`` bytes). For an
        AI-only call also its audio objects, crypto-shredded (DEK first, then the bytes)."""
        await self._fence(job)
        now = self._now()
        keep = bool(call.decision.get("store_recording"))
        shredded: list[StoredObject] = []
        if not keep:
            objects = await self._catalog.objects.list(
                recording.tenant_id, recording_id=recording.id
            )
            for stored in objects:
                if stored.kind == AUDIO_KIND and stored.state != "deleted":
                    await self._vault.shred_object(recording.tenant_id, stored.id, now=now)
                    shredded.append(stored)
        if wiped or not keep:
            await self._catalog.audit.append(
                recording.tenant_id,
                actor=ACTOR,
                action="ai.purged",
                object=recording.id,
                detail={
                    "working_copy_bytes": wiped,
                    "audio_objects_shredded": [o.id for o in shredded],
                    "audio_bytes_shredded": sum(o.size or 0 for o in shredded),
                    "recording_kept": keep,
                },
                now=now,
            )
        if self._notify is not None:
            event = "analysis.completed" if status == "analyzed" else "analysis.failed"
            data: dict[str, Any] = {
                "recording_id": recording.id,
                "call_id": call.id,
                "status": status,
                "features": list(call.decision.get("ai", ())),
            }
            if failure_reason is not None:
                data["reason"] = failure_reason
            digest = hashlib.sha256(f"{job.id}|{event}".encode()).hexdigest()[:32]
            await self._notify(
                tenant=recording.tenant_id,
                event=event,
                data=data,
                now=now,
                recording_id=recording.id,
                event_id=f"evt_{digest}",
            )
        await self._catalog.recordings.update_status(
            recording.tenant_id,
            recording.id,
            status,
            now,
            audio_purged=True if not keep else None,
            failure_reason=failure_reason,
        )


def expected_results(
    features: tuple[str, ...], *, keep_original: bool = False
) -> list[tuple[str, str]]:
    """The committed result objects a finished analysis of ``features`` leaves, sorted
    (``keep_original``: the unredacted transcript is kept beside the redacted one)."""
    kinds = []
    if any(feature in features for feature in ANALYSIS_FEATURES):
        kinds.append((ANALYSIS_KIND, "committed"))
    if "transcript" in features:
        kinds.append((TRANSCRIPT_KIND, "committed"))
        if keep_original:
            kinds.append((ORIGINAL_TRANSCRIPT_KIND, "committed"))
    return sorted(kinds)


def _keeps_original(redaction: RedactionRule) -> bool:
    """Whether the instructions keep an unredacted transcript beside the redacted one."""
    return redaction.transcript and redaction.keep_original


def _reason(error: BaseException) -> str:
    """A failure reason for the catalog and the API's ``analysis_failed``: the error's own
    message. CallvaultError messages are written for users; any other is a library's
    (CTranslate2, FFmpeg, ONNX Runtime: an out-of-memory, a missing library), which
    carries no call content, since nothing in the pipeline puts audio or text into an
    exception."""
    if isinstance(error, CallvaultError):
        return f"{error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"[:500]
