"""What the gateway exports at ``/metrics`` beyond the vault's own counters.

Labels are bounded vocabularies only (transports, error codes, node states; this node's own
id in ``callvault_node_info``): never a tenant, call id, number or token, so that the
metrics endpoint reveals nothing about calls and cannot grow without limit.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5,
    1.0, 1.5, 2.0, 2.25, 2.5, 2.75, 3.0, 5.0, 10.0,
)  # fmt: skip
"""Buckets of the loop lag and ingest-to-durable histograms: fine below 100 ms (loop lag's
50 ms bound) and around 2-3 s (the default flush interval plus 500 ms), so that a p99 read
from bucket deltas resolves both (bench/capacity.py)."""


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry or CollectorRegistry()
        self.active_calls = Gauge(
            "callvault_active_calls",
            "Accepted calls that are live (streaming, paused or awaiting a reconnect).",
            registry=registry,
        )
        self.frames_in = Counter(
            "callvault_frames_in",
            "Audio frames received, by transport.",
            ["transport"],
            registry=registry,
        )
        self.audio_discarded = Counter(
            "callvault_audio_discarded_bytes",
            "Audio bytes received while a call was paused, discarded unstored.",
            registry=registry,
        )
        self.refusals = Counter(
            "callvault_refusals",
            "Calls refused by the tenant's instructions or limits, by refusal code "
            "(limit_exceeded for a limit).",
            ["code"],
            registry=registry,
        )
        self.ingest_errors = Counter(
            "callvault_ingest_errors",
            "Ingest connections ended by an error, by error code.",
            ["code"],
            registry=registry,
        )
        self.jobs_queued = Counter(
            "callvault_jobs_queued",
            "AI jobs queued at the end of a call.",
            registry=registry,
        )
        self.rtp_datagrams = Counter(
            "callvault_rtp_datagrams",
            "RTP/SRTP datagrams received, by outcome: audio, telephone_event and "
            "comfort_noise were delivered; every other outcome is a reason for a drop.",
            ["outcome"],
            registry=registry,
        )
        self.rtp_ports = Gauge(
            "callvault_rtp_ports_in_use",
            "UDP ports held by live RTP calls (RTP and RTCP).",
            registry=registry,
        )
        self.dtmf_events = Counter(
            "callvault_dtmf_events",
            "DTMF digits received (the digits themselves are never stored), by transport.",
            ["transport"],
            registry=registry,
        )
        self.spool_bytes = Gauge(
            "callvault_spool_bytes",
            "Bytes in the spool: live calls' sealed audio and audio waiting for the store.",
            registry=registry,
        )
        self.spool_pending_bytes = Gauge(
            "callvault_spool_pending_bytes",
            "Bytes in the spool waiting to be published (the store was down at their commit).",
            registry=registry,
        )
        self.spool_quarantined = Gauge(
            "callvault_spool_quarantined_files",
            "Spool files that did not verify, moved to <spool>/.quarantine for an operator.",
            registry=registry,
        )
        self.spool_full_refusals = Counter(
            "callvault_spool_full_refusals",
            "New calls refused because the spool was at its bound (503 spool_full).",
            registry=registry,
        )
        self.flush_failures = Counter(
            "callvault_flush_failures",
            "Flushes of a call's audio to the object store that failed.",
            registry=registry,
        )
        self.connections = Gauge(
            "callvault_connections",
            "Open connections, by listener (http, audiosocket).",
            ["listener"],
            registry=registry,
        )
        self.connections_dropped = Counter(
            "callvault_connections_dropped",
            "Connections refused or closed to protect the node, by listener and reason "
            "(max_connections, max_connections_per_peer, header_timeout).",
            ["listener", "reason"],
            registry=registry,
        )
        self.node = Info(
            "callvault_node",
            "This gateway's id in the fleet's node registry (CALLVAULT_NODE__ID).",
            registry=registry,
        )
        self.nodes = Gauge(
            "callvault_nodes",
            "Nodes of the fleet's registry by state (up, stopped, dead), as this node last "
            "read it (every CALLVAULT_NODE__HEARTBEAT_INTERVAL).",
            ["state"],
            registry=registry,
        )
        self.nodes_declared_dead = Counter(
            "callvault_nodes_declared_dead",
            "Nodes this node declared dead (no heartbeat for CALLVAULT_NODE__DEAD_AFTER).",
            registry=registry,
        )
        self.event_loop_lag = Histogram(
            "callvault_event_loop_lag_seconds",
            "How late a 50 ms sleep on serve's event loop woke up, sampled continuously: "
            "the time the loop was too busy to run what was ready.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ingest_durable = Histogram(
            "callvault_ingest_durable_seconds",
            "For each flush of a call's track, the time from the arrival of the oldest frame "
            "it made durable to the return of the spool's fsync.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
