"""This gateway as one node of a fleet: its id, its addresses, its heartbeat, and what it
does about nodes that stop.

Several ``serve`` processes share one catalog and one object store; a load balancer may
send an announcement to any of them. The node that answers takes the call: the answer hands
the PBX *its* addresses (``NodeAddresses``: ``CALLVAULT_NODE__PUBLIC_HOST`` with its own
WebSocket, AudioSocket and RTP ports), the call row keeps its id, and the audio waits in its
spool until the call ends. So each node registers in the catalog's registry
(``storage.catalog.nodes``) and writes a heartbeat every ``CALLVAULT_NODE__HEARTBEAT_INTERVAL``;
on the same interval it looks for nodes whose heartbeat is older than
``CALLVAULT_NODE__DEAD_AFTER``, declares them dead (one conditional UPDATE: one node wins
each declaration), and settles what they left, on every node, idempotently:

* their live calls are ended (``node_dead``) with the audio they published, so that each
  call's normal job is queued and the call stops counting against the tenant's limits;
* the jobs whose audio waits in their spools are failed at once, naming the node (not after
  ``ai.worker.PUBLISH_GIVE_UP``), with nothing purged.

A node that comes back (the same id: ``node.id`` in its data dir) registers again, publishes
its spool, takes up its own calls, and reopens exactly the jobs failed on its account
(``reopen``), once all of their audio it held is published. A node that finds at a
heartbeat that it was declared dead while it ran (cut off from the catalog, or stalled)
does the same, after finishing its sessions of the calls that were ended meanwhile.

The heartbeat and the watch run on tasks of their own, off the ingest path; a catalog that
fails them is logged and tried again at the next interval, never stopping ingest. The
heartbeat starts as soon as the node registered, so that a slow start (a large spool to
publish) does not get it declared dead; the watch once its start-up reopening is done. A
node that stops with calls it could not finalize is not marked ``stopped``: it is declared
dead after ``dead_after`` and those calls are ended as a dead node's. Time comes from the
clock passed in; the nodes' clocks must agree to well within ``dead_after``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from crypto.errors import CallvaultError, ConfigError, DecryptionFailed
from gateway.calls import CallRegistry
from gateway.metrics import GatewayMetrics
from gateway.settings import NodeSettings, Settings, ip_of
from storage.catalog import Catalog
from storage.catalog.records import NODE_STATES, Call, Job
from storage.errors import ObjectNotFound, UnsupportedMedia
from storage.spool import Spool

log = logging.getLogger(__name__)

NODE_ID_FILE = "node.id"
REOPEN_PAGE = 100
"""How many jobs failed on this node's account one catalog query of ``reopen`` lists."""
SETTLE_PAGE = 100
"""How many calls, or jobs, of dead nodes one catalog query of ``settle`` lists."""
UNREADABLE = (DecryptionFailed, ObjectNotFound, UnsupportedMedia)
"""What reading a recording's published audio back may raise that no retry changes."""
NODE_ID_SETTING = "CALLVAULT_NODE__ID"
MAX_NODE_ID = 80
"""The longest node id: a stream lease's holder is the node id and 34 more characters
(``gateway.attachments``), and ``calls.attached_by`` holds 128."""
_NODE_ID = re.compile(rf"^[A-Za-z0-9._-]{{1,{MAX_NODE_ID}}}$")


# --- the node's id and addresses ------------------------------------------------------------


def node_id_of(settings: Settings) -> str:
    """The node's id: ``CALLVAULT_NODE__ID``, else the one kept in ``<data dir>/node.id``,
    made at the first start (the host name and a random suffix) and created atomically,
    so that a restarted node is the same node and two processes starting at once on one
    data dir agree. A ``node.id`` file that holds no valid id is a ``ConfigError``."""
    if settings.node.id is not None:
        return settings.node.id
    path = settings.data_dir / NODE_ID_FILE
    if not path.exists():
        _create_once(path, _new_node_id())
    try:
        value = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(NODE_ID_SETTING, f"{path} cannot be read: {e}.") from None
    if not _NODE_ID.match(value):
        raise ConfigError(
            NODE_ID_SETTING,
            f"{path} does not hold a node id (1-{MAX_NODE_ID} of A-Z a-z 0-9 . _ -); set "
            f"{NODE_ID_SETTING} or remove the file.",
        )
    return value


def _new_node_id() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname()).strip("-.")[:64]
    return f"{host or 'node'}-{secrets.token_hex(4)}"


def _create_once(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` unless it exists, atomically: a whole file or none (a
    temporary file, synced, then hard-linked into place, which fails if another process
    linked its own first)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        with temporary.open("x", encoding="ascii") as file:
            file.write(value + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made it first: its id wins
    except OSError as e:
        raise ConfigError(NODE_ID_SETTING, f"{path} cannot be created: {e.strerror or e}.") from e
    finally:
        temporary.unlink(missing_ok=True)


def _host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    address = ip_of(host)
    if address is not None and address.version == 6 and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class NodeAddresses:
    """Where this node's ingest listeners are, as announcements hand them to the PBX."""

    http: str
    """``host:port`` of the API and WebSocket ingest."""
    websocket: str | None
    """``ws://host:port`` or ``wss://host:port`` (with TLS, its own or a proxy's), when
    ``CALLVAULT_NODE__PUBLIC_HOST`` names the host; ``None`` otherwise (the PBX knows it)."""
    audiosocket: str | None
    """``host:port`` of the AudioSocket listener; ``None`` when it is off."""
    rtp_host: str
    """The host of the RTP/SRTP ports (``CALLVAULT_RTP__ADVERTISE_HOST`` first)."""
    rtp_ports: tuple[int, int]

    @classmethod
    def of(cls, settings: Settings) -> NodeAddresses:
        public = settings.node.public_host
        http = settings.http
        scheme = "wss" if http.tls or http.tls_offloaded else "ws"
        audiosocket = settings.audiosocket
        return cls(
            http=_host_port(public or http.host, http.port),
            websocket=f"{scheme}://{_host_port(public, http.port)}" if public else None,
            audiosocket=_host_port(public or audiosocket.host, audiosocket.port)
            if audiosocket.port
            else None,
            rtp_host=settings.rtp.advertise_host or public or settings.rtp.host,
            rtp_ports=(settings.rtp.port_min, settings.rtp.port_max),
        )

    def websocket_url(self, path: str) -> str | None:
        """The full URL of the WebSocket ``path`` on this node, when its host is known."""
        return None if self.websocket is None else self.websocket + path

    def document(self) -> dict[str, Any]:
        """The registry's ``addresses`` of this node (no secret: where it listens)."""
        return {
            "http": self.http,
            "websocket": self.websocket,
            "audiosocket": self.audiosocket,
            "rtp": {"host": self.rtp_host, "ports": list(self.rtp_ports)},
        }


# --- the node in the registry ---------------------------------------------------------------


class NodeKeeper:
    """This node's registration, heartbeat and watch over the other nodes."""

    def __init__(
        self,
        *,
        node_id: str,
        addresses: NodeAddresses,
        settings: NodeSettings,
        catalog: Catalog,
        calls: CallRegistry,
        metrics: GatewayMetrics,
        spool: Spool | None,
    ) -> None:
        self.id = node_id
        self.addresses = addresses
        self._settings = settings
        self._catalog = catalog
        self._calls = calls
        self._metrics = metrics
        self._spool = spool
        self._reopen_due = True
        """Jobs failed on this node's account may wait to be reopened: at start, after it
        learnt it was declared dead or that its heartbeat had been older than
        ``dead_after`` (workers fail its jobs then), and while its spool holds objects to
        publish."""
        self._beat_at: datetime | None = None
        metrics.node.info({"id": node_id})

    # --- joining and leaving ------------------------------------------------------------------

    async def join(self, now: datetime) -> None:
        """Register (again), before the node publishes its spool and takes calls. Once
        this committed, no job is failed on this node's account any more
        (``storage.catalog.nodes``)."""
        node = await self._catalog.nodes.register(self.id, self.addresses.document(), now)
        self._reopen_due = True
        self._beat_at = now
        log.info("node %s registered", node.id, extra={"node": node.id})

    async def stop(self, now: datetime, *, unfinished: int = 0) -> None:
        """A clean shutdown, after the live calls were finalized: the node is ``stopped``
        (nobody declares it dead). A catalog that fails it is logged: the node is then
        declared dead after ``dead_after``, which costs nothing more, its calls being
        finalized already.

        ``unfinished``: how many live calls could not be finalized (the catalog or the store
        failed them). Then the node is left ``up``, its heartbeat stopped, so that another
        node declares it dead after ``dead_after`` and ends those calls with what was
        published, failing the jobs whose audio waits in this node's spool until it is back
        (a ``stopped`` node's calls would never be ended by anyone)."""
        if unfinished:
            log.warning(
                "node %s stops with %d call(s) not finalized: it is not marked stopped, so "
                "that another node declares it dead after CALLVAULT_NODE__DEAD_AFTER and "
                "ends them",
                self.id,
                unfinished,
                extra={"node": self.id},
            )
            return
        try:
            await self._catalog.nodes.stop(self.id, now)
        except CallvaultError as e:
            log.warning("node %s could not be marked stopped: %s", self.id, e.code)

    # --- the heartbeat -------------------------------------------------------------------------

    async def heartbeat(self, now: datetime) -> None:
        """Write the heartbeat; if this node was declared dead meanwhile, register again
        and finish what it holds of the calls that were ended in its absence."""
        if await self._catalog.nodes.heartbeat(self.id, now):
            if self._beat_at is not None and now - self._beat_at > self._settings.dead_after:
                self._reopen_due = True  # workers may have failed jobs meanwhile
            self._beat_at = now
            return
        log.warning(
            "node %s was declared dead while it ran (cut off from the catalog or stalled "
            "for longer than CALLVAULT_NODE__DEAD_AFTER): it registers again, and its calls "
            "that were ended meanwhile are finalized here",
            self.id,
            extra={"node": self.id},
        )
        await self.join(now)
        for session in self._calls.live():
            try:
                call = await self._catalog.calls.get(session.tenant, session.call_id)
                if call.ended_at is not None:
                    # Finalized elsewhere: this commits (publishes) what it holds of it.
                    await self._calls.end(
                        session.tenant, session.call_id, now=now, reason="node_dead"
                    )
            except CallvaultError as e:  # the ticker finishes it later; the others go on
                log.warning(
                    "call %s ended in this node's absence could not be finalized here: %s",
                    session.call_id,
                    e.code,
                    extra={"tenant": session.tenant, "call_id": session.call_id},
                )

    # --- the watch -----------------------------------------------------------------------------

    async def watch(self, now: datetime) -> None:
        """One look at the fleet: reopen the jobs failed on this node's account when its
        spool is published; declare dead the nodes whose heartbeat stopped; settle what
        every dead node left (its live calls, its jobs waiting on its spool); count the
        nodes by state."""
        pending = self._spool is not None and self._spool.has_pending
        if self._reopen_due and not pending:
            await self.reopen(now)  # it keeps _reopen_due while it finds jobs
        elif pending:
            self._reopen_due = True
        dead_after = self._settings.dead_after
        for node in await self._catalog.nodes.declare_dead(now, dead_after, by=self.id):
            self._metrics.nodes_declared_dead.inc()
            log.warning(
                "node %s declared dead: no heartbeat since %s (CALLVAULT_NODE__DEAD_AFTER %s)",
                node.id,
                node.heartbeat_at.isoformat(),
                dead_after,
                extra={"node": node.id},
            )
        await self.settle(now)
        counts = dict.fromkeys(NODE_STATES, 0)
        for node in await self._catalog.nodes.list():
            counts[node.state] += 1
        for state, count in counts.items():
            self._metrics.nodes.labels(state).set(count)

    async def settle(self, now: datetime) -> None:
        """End the live calls of dead nodes with what they published (their jobs are
        queued), then fail at once the jobs whose audio waits in a dead node's spool: all of
        them, a page of ``SETTLE_PAGE`` at a time (what cannot be ended now is passed over
        and met again at the next look). Any node may do it, and doing it twice changes
        nothing."""
        after: tuple[datetime, str] | None = None
        while True:
            calls = await self._catalog.nodes.live_calls_of_dead(after=after, limit=SETTLE_PAGE)
            for call in calls:
                await self._end_call_of_dead(call, now)
            if len(calls) < SETTLE_PAGE:
                break
            after = (calls[-1].started_at, calls[-1].id)
        after = None
        while True:
            waiting = await self._catalog.nodes.jobs_of_dead(after=after, limit=SETTLE_PAGE)
            for job, node_id in waiting:
                await self._fail_waiting(job, node_id, now)
            if len(waiting) < SETTLE_PAGE:
                break
            last = waiting[-1][0]
            after = (last.run_after, last.id)

    async def _end_call_of_dead(self, call: Call, now: datetime) -> None:
        try:
            await self._calls.end_for_dead_node(call, now)
        except CallvaultError as e:
            log.warning(
                "call %s of dead node %s could not be ended: %s",
                call.id,
                call.node_id,
                e.code,
                extra={"tenant": call.tenant_id, "call_id": call.id, "code": e.code},
            )

    async def _fail_waiting(self, job: Job, node_id: str, now: datetime) -> None:
        failed = await self._catalog.nodes.fail_waiting(
            job, node_id, now, dead_after=self._settings.dead_after
        )
        if failed is not None:
            log.warning(
                "AI job %s (recording %s) failed at once: its audio waits in the spool "
                "of dead node %s",
                job.id,
                job.recording_id,
                node_id,
                extra={"tenant": job.tenant_id, "job": job.id, "node": node_id},
            )

    async def reopen(self, now: datetime) -> int:
        """Reopen the jobs failed because their audio waited in this node's spool, now that
        it is published, every one of them, a page of ``REOPEN_PAGE`` at a time: each
        recording's timeline is measured again from its published audio (the call may have
        been ended elsewhere with less), then the job is queued and the recording
        ``processing`` again, once (``Nodes.reopen``). How many.

        A job whose audio cannot be read back now (the store, the catalog or the key
        provider is down) is left for the next look: ``_reopen_due`` stays set while a pass
        finds any job, and the first pass that finds none clears it. Audio that can never be
        read (``UNREADABLE``) does not keep its job here for ever: it is reopened with the
        timeline the recording has, and a worker fails it as any unreadable audio (its
        attempts, its reason, the purge of AI-only audio)."""
        self._reopen_due = False  # a heartbeat that sets it during the pass is kept
        found = reopened = 0
        passed = False
        after: tuple[datetime, str] | None = None
        try:
            while True:
                page = await self._catalog.nodes.failed_while_away(
                    self.id, after=after, limit=REOPEN_PAGE
                )
                found += len(page)
                for job in page:
                    if await self._reopen_one(job, now):
                        reopened += 1
                if len(page) < REOPEN_PAGE:
                    break
                after = (page[-1].created_at, page[-1].id)
            passed = True
        finally:
            if found or not passed:
                self._reopen_due = True
        return reopened

    async def _reopen_one(self, job: Job, now: datetime) -> bool:
        """Reopen one job (``reopen``); ``False`` if it was not (refused, or left for the
        next look)."""
        assert job.recording_id is not None  # noqa: S101 - analyze jobs have one
        fields = {"tenant": job.tenant_id, "job": job.id}
        try:
            recording, call = await self._catalog.recordings.get_entry(
                job.tenant_id, job.recording_id
            )
            try:
                samples = max((await self._calls.track_ends(call, recording)).values(), default=0)
            except UNREADABLE as e:
                log.warning(
                    "AI job %s (recording %s): its published audio cannot be read (%s); "
                    "reopened all the same, for a worker to fail it",
                    job.id,
                    job.recording_id,
                    e.code,
                    extra=fields,
                )
                samples = 0
            done = await self._catalog.nodes.reopen(job, samples=samples, now=now)
        except CallvaultError as e:
            log.warning(
                "AI job %s could not be reopened yet (the next look tries again): %s",
                job.id,
                e.code,
                extra=fields,
            )
            return False
        if done is None:
            return False
        log.info(
            "AI job %s (recording %s) reopened: node %s is back and published its audio",
            job.id,
            job.recording_id,
            self.id,
            extra=fields,
        )
        return True


async def run_heartbeat(keeper: NodeKeeper, now: Callable[[], datetime], interval: float) -> None:
    """The heartbeat, every ``interval`` seconds, until cancelled. It starts right after
    ``join``, before the node publishes its spool and takes its calls up: a restart that
    spends longer than ``dead_after`` on that must not get the node declared dead."""
    await _every(keeper, keeper.heartbeat, "heartbeat", now, interval)


async def run_watch(keeper: NodeKeeper, now: Callable[[], datetime], interval: float) -> None:
    """The watch, every ``interval`` seconds, until cancelled, on a task of its own
    (settling many calls of a dead node must not hold back this node's heartbeat). It
    starts once the node's start-up ``reopen`` is done."""
    await _every(keeper, keeper.watch, "watch", now, interval)


async def _every(
    keeper: NodeKeeper,
    step: Callable[[datetime], Any],
    name: str,
    now: Callable[[], datetime],
    interval: float,
) -> None:
    """``step`` every ``interval`` seconds; a failure is logged and the next interval
    tries again."""
    while True:
        await asyncio.sleep(interval)
        try:
            await step(now())
        except CallvaultError as e:  # the catalog is down: expected, no traceback
            log.warning("node %s: %s failed: %s", keeper.id, name, e.code)
        except Exception:  # the node's tasks must outlive any one failure
            log.exception("node %s: %s failed", keeper.id, name)
