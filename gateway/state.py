"""The typed keys of the aiohttp app's shared state.

Handlers and the ingest glue read shared objects through these keys; they are set up and torn
down by ``gateway.app``'s ``cleanup_ctx``. The clock (``gateway.clock``) is app state so that
tests can turn it.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from ai.worker import WorkerMetrics
from gateway.calls import CallRegistry
from gateway.checkpoints import Checkpointer
from gateway.clock import Clock
from gateway.ingest.rtp_server import RtpIngest
from gateway.metrics import GatewayMetrics
from gateway.nodes import NodeKeeper
from gateway.services import Services
from gateway.settings import Settings
from gateway.workers import WorkerSupervisor
from storage.retention import RetentionSweeper

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
REGISTRY = web.AppKey("registry", CollectorRegistry)
METRICS = web.AppKey("metrics", GatewayMetrics)
CALLS = web.AppKey("calls", CallRegistry)
CLOCK = web.AppKey("clock", Clock)
RTP = web.AppKey("rtp", RtpIngest)
AI_METRICS = web.AppKey("ai_metrics", WorkerMetrics)
"""The metrics of AI workers run in this process: only a test's (serve's are children)."""
WORKERS = web.AppKey("workers", WorkerSupervisor)
SWEEPER = web.AppKey("sweeper", RetentionSweeper)
CHECKPOINTER = web.AppKey("checkpointer", Checkpointer)
NODE = web.AppKey("node", NodeKeeper)
"""This gateway in the fleet's node registry: its id, addresses, heartbeat and watch."""
