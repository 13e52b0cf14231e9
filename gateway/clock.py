"""The wall clock the gateway reads, in a module of its own.

Why this module exists: the clock is app state (``gateway.state.CLOCK``) so that tests can
turn it, and the RTP ingest takes it as a constructor argument. Living in ``gateway.state``
it made ``state`` and ``ingest.rtp_server`` import each other (state keys the RTP ingest;
the ingest typed its clock from state); here it depends on nothing of the gateway's.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["Clock"]


class Clock:
    """Wall-clock UTC time; the one place the gateway reads it."""

    def now(self) -> datetime:
        return datetime.now(UTC)
