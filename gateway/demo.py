"""``callvault demo``: push a real sample call through a running gateway and show the result.

A new operator's first question is "what does it actually do?", and the honest answer is a
call going in and a recording coming out. This module plays the part of everyone around the
gateway, over its public API only (the same requests a PBX and a tenant admin would make):
it creates a throw-away tenant, instructs it to record with every AI feature on, announces
a call, streams the packaged sample call (``gateway/demo_data``) as Twilio Media Streams
messages, and then fetches what the gateway stored: the recording's metadata, its decrypted
audio as a WAV file, and the transcript and analysis once the AI worker has finished the call.

Building the Twilio messages is kept apart from sending them (``twilio_messages``), so the
message stream can be checked without a socket. Tokens are minted here and never printed:
the demo's output is meant to be pasted into issues and chat.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import secrets
import ssl
import sys
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
from yarl import URL

from crypto.errors import CallvaultError
from storage.instructions import AI_FEATURES
from storage.media.codecs import codec

CALLER_NUMBER = "+40215550100"
AGENT_NUMBER = "+40215550199"
FRAME_SAMPLES = 160
"""Samples per media message: 20 ms at 8 kHz, what Twilio sends."""
FRAME_S = 0.02
TRACK_SIDES = {"inbound": "caller, left", "outbound": "agent, right"}
TRACK_SPEAKERS = {"inbound": "caller", "outbound": "agent"}
DEMO_INSTRUCTIONS: dict[str, Any] = {
    "recording": {"enabled": True},
    "consent": {"required": True},
    "ai": {feature: True for feature in AI_FEATURES},
}
"""Record (with consent, which the demo call has) and run every AI feature."""
CLOSE_WAIT_S = 60.0
"""How long to wait for the gateway's close after ``stop`` (it seals and commits first)."""
TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10)
ANALYSIS_WAIT_S = 120.0
"""How long the demo waits for the AI worker (the first job also loads the model)."""
ANALYSIS_POLL_S = 0.25
NOT_YET = frozenset({404, 405})
"""Answers of a gateway without the AI endpoints (the route does not exist yet)."""


@dataclass(frozen=True, slots=True)
class SampleCall:
    """The packaged sample call: one int16 mono array per track, at ``sample_rate``."""

    sample_rate: int
    inbound: npt.NDArray[np.int16]
    outbound: npt.NDArray[np.int16]

    @property
    def duration_s(self) -> float:
        return len(self.inbound) / self.sample_rate


def load_sample_call() -> SampleCall:
    """Read ``gateway/demo_data/sample_call.wav`` (stereo 16-bit: caller left, agent right)."""
    data = resources.files("gateway.demo_data").joinpath("sample_call.wav").read_bytes()
    with wave.open(io.BytesIO(data)) as wav:
        if wav.getnchannels() != 2 or wav.getsampwidth() != 2:
            raise CallvaultError("The packaged sample call is not a stereo 16-bit WAV.")
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.int16)
    stereo = pcm.reshape(-1, 2)
    return SampleCall(rate, np.ascontiguousarray(stereo[:, 0]), np.ascontiguousarray(stereo[:, 1]))


def twilio_messages(
    sample: SampleCall, call_id: str, *, stream_sid: str
) -> Iterator[tuple[float, str]]:
    """The sample call as a Twilio Media Streams session: ``connected``, ``start``, one
    ``media`` message per track per 20 ms (µ-law, both tracks interleaved, timestamps in
    milliseconds from the start), ``stop``. Shapes as documented at
    https://www.twilio.com/docs/voice/media-streams/websocket-messages.

    Each message comes with the second of the call at which a PBX would send it (a frame
    once it has been captured), so a sender can pace them; the generator itself keeps no
    time."""
    ulaw = codec("pcmu")
    payloads = {"inbound": ulaw.encode(sample.inbound), "outbound": ulaw.encode(sample.outbound)}
    sequence = 1
    yield 0.0, json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    start = {
        "streamSid": stream_sid,
        "callSid": "CA" + secrets.token_hex(16),
        "tracks": list(payloads),
        "customParameters": {"call_id": call_id},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    yield (
        0.0,
        json.dumps(
            {
                "event": "start",
                "sequenceNumber": str(sequence),
                "start": start,
                "streamSid": stream_sid,
            }
        ),
    )
    frames = -(-len(sample.inbound) // FRAME_SAMPLES)
    for index in range(frames):
        for track, payload in payloads.items():
            chunk = payload[index * FRAME_SAMPLES : (index + 1) * FRAME_SAMPLES]
            if not chunk:
                continue
            sequence += 1
            media = {
                "track": track,
                "chunk": str(index + 1),
                "timestamp": str(index * 20),
                "payload": base64.b64encode(chunk).decode(),
            }
            yield (
                (index + 1) * FRAME_S,
                json.dumps(
                    {
                        "event": "media",
                        "sequenceNumber": str(sequence),
                        "media": media,
                        "streamSid": stream_sid,
                    }
                ),
            )
    sequence += 1
    yield (
        frames * FRAME_S,
        json.dumps(
            {
                "event": "stop",
                "sequenceNumber": str(sequence),
                "stop": {"callSid": start["callSid"]},
                "streamSid": stream_sid,
            }
        ),
    )


class _Api:
    """The gateway's HTTP API as the demo uses it: JSON in, JSON out, and one sentence
    (a ``CallvaultError``) for any answer the demo did not expect."""

    def __init__(self, session: aiohttp.ClientSession, base_url: URL) -> None:
        self.session = session
        self.base_url = base_url

    def url(self, path: str) -> URL:
        # Relative to the base URL, so a gateway behind a path prefix works too.
        return self.base_url.join(URL(path.lstrip("/")))

    async def call(self, step: str, method: str, path: str, token: str, body: Any = None) -> Any:
        async with self.session.request(
            method, self.url(path), json=body, headers=_bearer(token)
        ) as response:
            if response.status not in (200, 201):
                raise CallvaultError(f"{step}: {await _refusal(response)}")
            return await response.json()

    async def optional(self, path: str, token: str) -> tuple[int, Any]:
        """(status, JSON body or the refusal sentence) of a GET that may not exist yet."""
        async with self.session.get(self.url(path), headers=_bearer(token)) as response:
            if response.status == 200:
                return 200, await response.json()
            return response.status, await _refusal(response)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _refusal(response: aiohttp.ClientResponse) -> str:
    """The gateway's error answer as one readable clause (never the request's headers)."""
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        body = None
    if isinstance(body, dict) and "error" in body:
        return f"the server answered {response.status} {body['error']}: {body.get('message')}"
    return f"the server answered {response.status} {response.reason}"


async def run_demo(
    base_url: str,
    operator_token: str,
    *,
    out: Path,
    realtime: bool = False,
    analysis_wait_s: float = ANALYSIS_WAIT_S,
    cafile: Path | None = None,
) -> int:
    """Run the demo against the gateway at ``base_url``; 0 on success, 1 with one sentence
    on stderr otherwise. ``realtime`` paces the stream at 20 ms per frame, as a PBX does;
    otherwise it goes as fast as the gateway takes it. The transcript and analysis are
    awaited for ``analysis_wait_s``. An ``https://`` server's certificate is verified
    against ``cafile`` when given, else against the default trust store (which OpenSSL
    takes from ``SSL_CERT_FILE`` when that is set)."""
    url = URL(base_url.rstrip("/") + "/")
    if url.scheme not in ("http", "https") or not url.host:
        return _fail(f"--url must be the server's http:// or https:// address, not {base_url!r}.")
    shown = str(url).rstrip("/")
    try:
        trust: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=cafile) if cafile is not None else True
        )
    except (OSError, ssl.SSLError) as e:
        return _fail(f"--cafile {cafile} is not a readable PEM CA file ({e}).")
    try:
        sample = load_sample_call()
        connector = aiohttp.TCPConnector(ssl=trust)
        async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
            await _demo(
                _Api(session, url), operator_token, sample, out, realtime, shown, analysis_wait_s
            )
    except aiohttp.ClientConnectorCertificateError as e:
        return _fail(
            f"the certificate of {shown} is not trusted ({e.certificate_error}): pass the CA "
            "that signed it with --cafile (or SSL_CERT_FILE), or check --url's host name."
        )
    except aiohttp.ClientConnectorError:
        return _fail(
            f"cannot reach a callvault server at {shown}: start one with `make run` "
            "(or `callvault serve`), or point --url at the one you have."
        )
    except (aiohttp.ClientError, TimeoutError) as e:
        return _fail(f"the connection to {shown} failed mid-way ({type(e).__name__}: {e}).")
    except CallvaultError as e:
        return _fail(e.message)
    return 0


def _fail(sentence: str) -> int:
    print(f"callvault demo: {sentence}", file=sys.stderr)
    return 1


async def _demo(
    api: _Api,
    operator: str,
    sample: SampleCall,
    out: Path,
    realtime: bool,
    shown: str,
    analysis_wait_s: float,
) -> None:
    tenant = "demo-" + secrets.token_hex(3)
    print(f"callvault demo against {shown}")
    await _create_tenant(api, operator, tenant, shown)
    admin = (
        await api.call(
            "minting an admin token",
            "POST",
            f"/v1/tenants/{tenant}/tokens",
            operator,
            {"role": "admin"},
        )
    )["token"]
    pbx = (
        await api.call(
            "minting a pbx token", "POST", f"/v1/tenants/{tenant}/tokens", admin, {"role": "pbx"}
        )
    )["token"]
    print(f"  tenant        {tenant} (new; an admin and a pbx token minted, not shown)")

    instructions = await api.call(
        "storing the instructions",
        "PUT",
        f"/v1/tenants/{tenant}/instructions",
        admin,
        DEMO_INSTRUCTIONS,
    )
    features = ", ".join(name for name, on in instructions["ai"].items() if on is True)
    print(
        f"  instructions  version {instructions['version']}: recording on, consent required, "
        f"AI: {features}"
    )

    announced = await api.call(
        "announcing the call",
        "POST",
        f"/v1/tenants/{tenant}/calls",
        pbx,
        {
            "from": CALLER_NUMBER,
            "to": AGENT_NUMBER,
            "direction": "inbound",
            "consent": "granted",
            "transport": "twilio",
            "codec": "pcmu",
            "sample_rate": sample.sample_rate,
        },
    )
    call_id, recording_id = announced["call_id"], announced["recording_id"]
    print(f"  call          {call_id}: {CALLER_NUMBER} (caller) -> {AGENT_NUMBER} (agent)")

    path = announced.get("ingest", {}).get("websocket") or "/v1/ingest/twilio"
    print(
        f"  streaming     {sample.duration_s:.2f} s of speech to {path} "
        f"({'real time' if realtime else 'as fast as it is taken'}) ...",
        flush=True,
    )
    code, reason = await _stream(api, path, pbx, sample, call_id, realtime)
    if code != 1000:
        raise CallvaultError(
            f"the gateway closed the media stream with {code} ({reason or 'no reason'}) "
            "instead of 1000 after stop."
        )
    print(f"                done; the gateway closed the stream with 1000 ({reason})")

    recording = await api.call(
        "fetching the recording", "GET", f"/v1/recordings/{recording_id}", admin
    )
    _print_recording(recording)

    await _download(api, recording_id, admin, out)
    if await _await_analysis(api, recording_id, admin, analysis_wait_s):
        await _print_transcript(api, recording_id, admin)
        await _print_analysis(api, recording_id, admin)


async def _await_analysis(api: _Api, recording_id: str, admin: str, wait_s: float) -> bool:
    """Wait for the AI worker to finish the call; False (after saying why) if it did not."""
    print(f"analysis      waiting for the AI worker (up to {wait_s:.0f} s) ...", flush=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        recording = await api.call(
            "fetching the recording", "GET", f"/v1/recordings/{recording_id}", admin
        )
        status = recording.get("status")
        if status == "analyzed":
            print("              done")
            return True
        if status != "processing":
            print(f"              the recording is {status}: {recording.get('failure_reason')}")
            return False
        if loop.time() > deadline:
            print(
                "              no AI worker finished the call in time: is "
                "CALLVAULT_AI__WORKERS 0 on the server and no `callvault worker` running?"
            )
            return False
        await asyncio.sleep(ANALYSIS_POLL_S)  # polling the server's progress


async def _create_tenant(api: _Api, operator: str, tenant: str, shown: str) -> None:
    """The first request, so its refusals get sentences of their own: the two ways a first
    demo usually goes wrong are a wrong token and a token of the wrong role."""
    async with api.session.post(
        api.url("/v1/tenants"),
        json={"id": tenant, "name": "Demo tenant"},
        headers=_bearer(operator),
    ) as response:
        if response.status == 401:
            raise CallvaultError(
                f"the server at {shown} did not accept the operator token: use the one "
                "`callvault serve` printed at its first start, or mint one with "
                "`callvault token create --role operator` using the server's data dir "
                "(--data-dir or CALLVAULT_DATA_DIR)."
            )
        if response.status == 403:
            raise CallvaultError(
                f"the token is not an operator token (the server at {shown} answered 403); "
                "mint one with `callvault token create --role operator`."
            )
        if response.status != 201:
            raise CallvaultError(f"creating the demo tenant: {await _refusal(response)}")


async def _stream(
    api: _Api, path: str, pbx: str, sample: SampleCall, call_id: str, realtime: bool
) -> tuple[int | None, str]:
    """Send the call and wait for the gateway's close; (close code, reason).

    The close is read concurrently with sending: a gateway that refuses the stream closes
    it at once (1008 with the refusal code), and the demo stops sending then instead of
    writing into a closed socket."""
    loop = asyncio.get_running_loop()
    async with api.session.ws_connect(api.url(path), headers=_bearer(pbx)) as ws:
        closed = asyncio.create_task(_closed(ws))
        try:
            began = loop.time()
            stream_sid = "MZ" + secrets.token_hex(16)
            for at, message in twilio_messages(sample, call_id, stream_sid=stream_sid):
                if closed.done():
                    break
                if realtime and (delay := began + at - loop.time()) > 0:
                    await asyncio.sleep(delay)  # pacing like a PBX, not waiting for state
                await ws.send_str(message)
            return await asyncio.wait_for(asyncio.shield(closed), CLOSE_WAIT_S)
        except TimeoutError:
            raise CallvaultError(
                f"the gateway did not close the media stream within {CLOSE_WAIT_S:.0f} s "
                "after stop."
            ) from None
        finally:
            closed.cancel()


async def _closed(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    """Read until the server closes; the gateway sends nothing else on an ingest socket."""
    while True:
        message = await ws.receive()
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING):
            return ws.close_code, str(message.extra or "")
        if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return ws.close_code, ""


def _print_recording(recording: dict[str, Any]) -> None:
    tracks = ", ".join(f"{t} ({TRACK_SIDES.get(t, '?')})" for t in recording.get("tracks", []))
    duration = recording.get("duration_s")
    rows = [
        ("id", recording.get("id")),
        ("status", recording.get("status")),
        ("duration", f"{duration:.2f} s" if isinstance(duration, int | float) else "-"),
        ("tracks", tracks or "-"),
        ("codec", f"{recording.get('codec')}, {recording.get('sample_rate', '?')} Hz"),
        ("instructions", f"version {recording.get('instructions_version')}"),
        ("expires at", recording.get("expires_at") or "-"),
    ]
    print("recording")
    for label, value in rows:
        print(f"  {label:<13} {value}")


async def _download(api: _Api, recording_id: str, admin: str, out: Path) -> None:
    async with api.session.get(
        api.url(f"/v1/recordings/{recording_id}/audio"), headers=_bearer(admin)
    ) as response:
        if response.status != 200:
            raise CallvaultError(f"downloading the audio: {await _refusal(response)}")
        # A demo call is a few hundred KB; a short body (the export stopped) raises here.
        data = await response.read()
    try:
        await asyncio.to_thread(out.write_bytes, data)
    except OSError as e:
        raise CallvaultError(f"cannot write the audio to {out}: {e.strerror or e}.") from None
    print(f"audio saved to {out} ({len(data) // 1024} KB; stereo: caller left, agent right)")
    print(f"  play it: aplay {out}   (or open it in any audio player)")


async def _fetch_result(
    api: _Api, recording_id: str, token: str, name: str
) -> dict[str, Any] | None:
    """The recording's ``name`` (transcript, analysis), or ``None`` after saying why not."""
    status, body = await api.optional(f"/v1/recordings/{recording_id}/{name}", token)
    if status in NOT_YET:
        print(f"{name}: not available in this version")
        return None
    if status != 200:
        print(f"{name}: not ready ({body})")
        return None
    return body


async def _print_transcript(api: _Api, recording_id: str, token: str) -> None:
    body = await _fetch_result(api, recording_id, token, "transcript")
    if body is None:
        return
    print(f"transcript ({body.get('language', '?')}, {body.get('model', '?')})")
    for segment in body.get("segments", []):
        speaker = TRACK_SPEAKERS.get(segment.get("track"), segment.get("track"))
        print(
            f"  {segment.get('start', 0):6.2f}-{segment.get('end', 0):6.2f}  "
            f"{speaker:<6}  {segment.get('text', '').strip()}"
        )


async def _print_analysis(api: _Api, recording_id: str, token: str) -> None:
    body = await _fetch_result(api, recording_id, token, "analysis")
    if body is None:
        return
    print("analysis")
    if "summary" in body:
        print(f"  summary       {body['summary']}")
    if "sentiment" in body:
        sentiment = body["sentiment"]
        tracks = ", ".join(
            f"{TRACK_SPEAKERS.get(track, track)} {value['label']} ({value['score']:+.2f})"
            for track, value in sentiment.get("tracks", {}).items()
        )
        overall = sentiment["overall"]
        print(f"  sentiment     {overall['label']} ({overall['score']:+.2f}); {tracks}")
    if "talk_listen" in body:
        talk = body["talk_listen"]
        tracks = ", ".join(
            f"{TRACK_SPEAKERS.get(track, track)} {value['talk_s']:.1f} s"
            for track, value in talk["tracks"].items()
        )
        print(
            f"  talk/listen   {tracks}; agent/caller {talk['talk_to_listen']}, silence "
            f"{talk['silence_s']:.1f} s, overlap {talk['overlap_s']:.1f} s, "
            f"interruptions {talk['interruptions']}"
        )
    if "topics" in body:
        phrases = ", ".join(p["phrase"] for p in body["topics"]["key_phrases"][:6])
        print(f"  key phrases   {phrases}")
    print(f"  (all of it: GET /v1/recordings/{recording_id}/analysis)")
