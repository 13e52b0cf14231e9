"""What the browser console costs over the API it is built on.

Every console page asks the API's own routes for what it shows (``gateway.api.dispatch``)
and draws HTML from the answers (Jinja2, server-side SVG charts). This measures what that
costs: each page against the API requests a client would make for the same content, on one
in-process gateway (SQLite catalog, file store, loopback HTTP), alternating, the median of
``--rounds`` rounds of ``--requests`` requests each:

* ``list``: ``/console/recordings`` against ``GET /v1/tenants/{t}/recordings?limit=25``;
* ``recording``: a recording's page (metadata, transcript, analysis drawn, holds) against
  ``GET`` of the recording, its transcript and its analysis (three requests);
* ``audit``: ``/console/audit`` (verification and 100 events) against ``GET .../audit``
  and ``.../audit/verify``;
* ``audio``: the WAV through the console against ``GET /v1/recordings/{id}/audio``.

The tenant has ``--calls`` recordings of the packaged test call "support" (32 s, two
speakers); one of them is analysed by the AI worker with the tests' scripted transcriber,
so the recording page draws every section.

    python bench/console.py [--calls 60] [--requests 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arguments import positive  # noqa: E402
from report import print_table  # noqa: E402

from gateway.app import build_app  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from tests.ai import ScriptedTranscriber, new_worker, push, sample_call  # noqa: E402
from tests.console import Browser  # noqa: E402
from tests.gateway import (  # noqa: E402
    ALL_AI,
    RECORD,
    FakeClock,
    Gateway,
    GatewayServer,
    bearer,
    free_port,
    start_gateway,
)

Fetch = Callable[[], Awaitable[int]]


async def timed(fetch: Fetch, requests: int) -> tuple[float, int]:
    """Milliseconds per request (median of one round's requests) and the bytes of one."""
    times, size = [], 0
    for _ in range(requests):
        began = time.perf_counter()
        size = await fetch()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), size


async def run(calls: int, requests: int, rounds: int) -> list[dict[str, object]]:
    from aiohttp.test_utils import TestClient

    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            data_dir=Path(data_dir),
            audiosocket={"port": free_port()},
            ai={"workers": 0},
            retention={"sweep_interval": "PT0S"},
            audit={"checkpoint_interval": "PT0S"},
        )
        clock = FakeClock()
        client = TestClient(GatewayServer(build_app(settings, clock=clock)))
        await client.start_server()
        try:
            gw: Gateway = await start_gateway(client)
            tenant = await gw.tenant("acme", {**RECORD, "ai": ALL_AI})
            call = sample_call("support")
            announced = [await push(gw, tenant, call) for _ in range(calls)]
            worker = new_worker(gw, settings, clock, ScriptedTranscriber())
            while await worker.run_once():
                pass
            await worker.close()
            recording = announced[-1]["recording_id"]
            browser = Browser(client)
            await browser.sign_in(tenant.admin)
            admin = bearer(tenant.admin)

            async def api(*paths: str) -> int:
                size = 0
                for path in paths:
                    async with client.get(path, headers=admin) as response:
                        assert response.status == 200, (path, response.status)
                        size += len(await response.read())
                return size

            async def page(path: str) -> int:
                response, text = await browser.get(path)
                assert response.status == 200, (path, response.status)
                return len(text.encode()) or int(response.headers["Content-Length"])

            pages: dict[str, tuple[Fetch, Fetch]] = {
                "list": (
                    lambda: api("/v1/tenants/acme/recordings?limit=25"),
                    lambda: page("/console/recordings"),
                ),
                "recording": (
                    lambda: api(
                        f"/v1/recordings/{recording}",
                        f"/v1/recordings/{recording}/transcript",
                        f"/v1/recordings/{recording}/analysis",
                    ),
                    lambda: page(f"/console/recordings/{recording}"),
                ),
                "audit": (
                    lambda: api(
                        "/v1/tenants/acme/audit?limit=100", "/v1/tenants/acme/audit/verify"
                    ),
                    lambda: page("/console/audit"),
                ),
                "audio": (
                    lambda: api(f"/v1/recordings/{recording}/audio"),
                    lambda: page(f"/console/recordings/{recording}/audio"),
                ),
            }
            rows = []
            for name, (through_api, through_console) in pages.items():
                api_ms, console_ms = [], []
                api_size = console_size = 0
                for _ in range(rounds):  # alternating, so drift hits both alike
                    ms, api_size = await timed(through_api, requests)
                    api_ms.append(ms)
                    ms, console_size = await timed(through_console, requests)
                    console_ms.append(ms)
                api_median, console_median = (
                    statistics.median(api_ms),
                    statistics.median(console_ms),
                )
                rows.append(
                    {
                        "page": name,
                        "api_ms": round(api_median, 2),
                        "console_ms": round(console_median, 2),
                        "console_vs_api": round(console_median / api_median, 2),
                        "api_bytes": api_size,
                        "console_bytes": console_size,
                    }
                )
            return rows
        finally:
            await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=positive, default=60)
    parser.add_argument("--requests", type=positive, default=50)
    parser.add_argument("--rounds", type=positive, default=5)
    args = parser.parse_args()
    rows = asyncio.run(run(args.calls, args.requests, args.rounds))
    print(f"console pages against the API ({platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}; {args.calls} recordings, median of "
          f"{args.rounds} rounds x {args.requests} requests)")  # fmt: skip
    print_table(
        ["page", "API ms", "console ms", "console / API", "API bytes", "console bytes"],
        [[r["page"], r["api_ms"], r["console_ms"], f'{r["console_vs_api"]}x', r["api_bytes"],
          r["console_bytes"]] for r in rows],
    )  # fmt: skip
    print(json.dumps({"bench": "console", "calls": args.calls, "requests": args.requests,
                      "rounds": args.rounds, "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
