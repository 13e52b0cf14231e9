"""Which event loop ``serve`` runs on, and how busy it is.

uvloop (libuv under asyncio's interface) runs the media path's sockets, timers and callbacks
in C; issue 17 measured bare receivers holding about twice the calls on it. The standard
library's loop stays supported (``CALLVAULT_HTTP__LOOP=asyncio``, a platform without uvloop)
and tested: nothing in callvault depends on which one runs.

The lag probe sleeps ``LAG_PROBE_S`` over and over and records how late each wake-up came
(``callvault_event_loop_lag_seconds``): the time callbacks that were ready waited for the loop,
the one number that says a node is past what its core can carry.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, TypeVar

from crypto.errors import ConfigError
from gateway.settings import LoopChoice

T = TypeVar("T")

LoopKind = Literal["uvloop", "asyncio"]

LAG_PROBE_S = 0.05
"""The lag probe's sleep: 20 samples a second, a cost nobody sees."""


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_kind(choice: LoopChoice) -> LoopKind:
    """The loop ``choice`` names (``auto``: uvloop when it can be imported, else asyncio)."""
    if choice == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    if choice == "uvloop" and not uvloop_available():
        raise ConfigError(
            "CALLVAULT_HTTP__LOOP",
            "is uvloop, which cannot be imported here; install it (it is a dependency of "
            "callvault) or choose asyncio or auto.",
        )
    return choice


def loop_factory(kind: LoopKind) -> Callable[[], asyncio.AbstractEventLoop]:
    """A new event loop of ``kind`` per call (``asyncio.Runner``'s ``loop_factory``)."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], kind: LoopKind) -> T:
    """``asyncio.run(main)`` on a new loop of ``kind``."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)


def running_kind() -> LoopKind:
    """The kind of the loop running now."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


async def probe_lag(
    observe: Callable[[float], None],
    *,
    time: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    interval: float = LAG_PROBE_S,
) -> None:
    """Until cancelled: sleep ``interval``, then ``observe`` how much later than asked the
    wake-up came, by ``time`` (the loop's monotonic clock, ``loop.time``)."""
    while True:
        asked = time() + interval
        await sleep(interval)
        observe(max(0.0, time() - asked))
