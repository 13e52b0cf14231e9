"""Draw the README's screenshot of the console's recording page, from a real run.

Starts ``callvault serve`` (a throw-away data dir, a free port, the packaged tiny.en model),
creates a tenant whose instructions turn every AI feature on, pushes the packaged sample
call (``gateway/demo_data``) over Twilio Media Streams, waits for the AI worker, signs in to
the console as the tenant's admin in Debian's chromium (Playwright) and saves the recording
page, reduced to a 64-colour PNG so that the README stays small:

    .venv/bin/python tools/console_screenshot.py [--out docs/console-recording.png]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image
from playwright.sync_api import sync_playwright

from gateway.demo import load_sample_call, twilio_messages

ROOT = Path(__file__).resolve().parents[1]
AI = {"transcript": True, "summary": True, "sentiment": True, "talk_listen": True, "topics": True}
INSTRUCTIONS = {
    "recording": {"enabled": True},
    "ai": {**AI, "language": "en", "categories": {"support": ["internet", "router", "help"]}},
}
WAIT_S = 180.0
LOADED = "p => p.duration > 0 || new Promise(done => p.addEventListener('loadedmetadata', done))"
"""Waits until the player knows the audio's length (run in Playwright's own world: the
console's CSP forbids a page to evaluate strings, which ``wait_for_function`` does)."""


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=1) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def prepare(base: str, operator: str) -> tuple[str, str]:
    """A tenant with the sample call analysed: (admin token, recording id)."""
    async with aiohttp.ClientSession(base) as http:

        async def call(method: str, path: str, token: str, body: Any = None) -> Any:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.request(method, path, json=body, headers=headers) as response:
                if response.status >= 300:
                    raise SystemExit(f"{method} {path}: {response.status} {await response.text()}")
                return await response.json()

        await call("POST", "/v1/tenants", operator, {"id": "acme", "name": "Acme SRL"})
        tokens = "/v1/tenants/acme/tokens"
        admin = (await call("POST", tokens, operator, {"role": "admin"}))["token"]
        pbx = (await call("POST", tokens, admin, {"role": "pbx"}))["token"]
        await call("PUT", "/v1/tenants/acme/instructions", admin, INSTRUCTIONS)
        body = {"from": "+40711111111", "to": "+40722222222", "consent": "granted",
                "transport": "twilio", "direction": "inbound"}  # fmt: skip
        announced = await call("POST", "/v1/tenants/acme/calls", pbx, body)
        sample = load_sample_call()
        headers = {"Authorization": f"Bearer {pbx}"}
        async with http.ws_connect("/v1/ingest/twilio", headers=headers) as ws:
            stream_sid = "MZ" + secrets.token_hex(16)
            for _, message in twilio_messages(sample, announced["call_id"], stream_sid=stream_sid):
                await ws.send_str(message)
            await ws.receive()  # the gateway's close after stop
        recording_id = announced["recording_id"]
        deadline = time.monotonic() + WAIT_S
        while (await call("GET", f"/v1/recordings/{recording_id}", admin))["status"] not in (
            "analyzed",
            "failed",
        ):
            if time.monotonic() > deadline:
                raise SystemExit("the AI worker did not finish the sample call in time")
            await asyncio.sleep(0.5)  # another process's progress
        return admin, recording_id


def shoot(base: str, admin: str, recording_id: str, out: Path) -> None:
    chromium = os.environ.get("CALLVAULT_TEST_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"{base}/console/sign-in")
        page.get_by_label("Token").fill(admin)
        page.get_by_role("button", name="Sign in").click()
        page.goto(f"{base}/console/recordings/{recording_id}")
        # The page loads no audio until played; load its metadata so the player shows the
        # call's length, as it does once played.
        page.locator("#player").evaluate("p => { p.preload = 'metadata'; p.load(); }")
        page.locator("#player").evaluate(LOADED)
        raw = out.with_suffix(".raw.png")
        page.screenshot(path=raw, full_page=True)
        browser.close()
    image = Image.open(raw).convert("RGB")
    image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS)
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    raw.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console-recording.png")
    args = parser.parse_args()
    port, operator = free_port(), secrets.token_urlsafe(36)
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLVAULT_")}
        env.update(
            CALLVAULT_DATA_DIR=data_dir,
            CALLVAULT_HTTP__PORT=str(port),
            CALLVAULT_AUDIOSOCKET__PORT="0",
            CALLVAULT_OPERATOR_TOKEN=operator,
            CALLVAULT_AI__MODEL="tiny.en",
            CALLVAULT_AI__WORKERS="1",
            CALLVAULT_AI__POLL_INTERVAL="PT0.2S",
        )
        log = Path(data_dir) / "serve.log"
        with log.open("wb") as sink:
            serve = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "gateway.cli", "serve"], env=env, stdout=sink, stderr=sink
            )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while not ready(base):
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"serve did not start:\n{log.read_text()}")
                time.sleep(0.2)  # another process's start
            admin, recording_id = asyncio.run(prepare(base, operator))
            shoot(base, admin, recording_id, args.out)
        finally:
            serve.kill()
            serve.wait()
    print(f"{args.out}: {args.out.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
