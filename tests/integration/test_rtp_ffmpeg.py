"""The RTP/SRTP ingest against an independent sender: Debian's ffmpeg.

The other RTP tests send packets built by our own helper (``tests/rtp.py``, pylibsrtp), where
a misreading of the RFCs shared by sender and receiver would go unnoticed. Here ffmpeg's RTP
muxer and its own SRTP implementation (libavformat ``srtp.c``, not libsrtp) send each call,
in real time (``-re``), with the keys the announcement handed out, one ffmpeg output per
track, as a PBX forking a call would:

* PCMU with exactly 160 samples (20 ms) per packet. ffmpeg's RTP muxer cuts each encoded
  packet into ``pkt_size``-bounded datagrams, and neither ``-frame_size`` nor ``pkt_size``
  alone gives 20 ms packets (the WAV demuxer's 2048-sample packets leave short remainders);
  ``-af asetnsamples=n=160`` makes every audio frame, hence every encoded packet and every
  datagram, 160 samples (the last one padded with silence);
* Opus (libopus, 48 kHz mono, 20 ms frames, 64 kbit/s) on the dynamic payload type ffmpeg
  picks (97).

Each codec carries two calls: synthetic signals (a rising chirp inbound, a falling one
outbound: unlike tones, neither repeats, so the alignment finds one lag) and the shipped
speech sample (its caller channel inbound, its agent channel outbound). After the call ends
the exported WAV must match what was sent, per track, sample-accurately placed:

* correlation >= 0.95 with the reference at the lag that maximizes it (searched over
  ``0..MAX_LEAD_IN_S``), over the whole reference, so a track cut short fails too. The
  reference is what the gateway can at best reproduce: for PCMU the µ-law round trip of
  the source; for Opus the source itself (at 48 kHz; the lag absorbs the encoder's 312
  samples of pre-skip, which RTP does not carry);
* the exported duration minus the lead-in (the larger of the two tracks' lags: both tracks
  carry the same number of samples, so the one that starts later ends the WAV) is within
  1 % of the source's duration;
* the datagram counters: no drop of any reason (``auth_failed``, ``replay``, ``malformed``
  and the rest) but ``rtcp`` (ffmpeg's sender reports to port + 1, counted and dropped), and
  each packet ffmpeg sent counted as ``audio`` and as one frame in.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import wave
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.app import build_app
from gateway.ingest.rtp import DROP_REASONS
from gateway.settings import AudioSocketSettings, Settings
from tests.gateway import (
    ULAW,
    Gateway,
    GatewayServer,
    bearer,
    free_port,
    metric_value,
    read_wav,
    start_gateway,
)
from tests.parts import require_part

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ON = {"recording": {"enabled": True}}
TRACKS = ("inbound", "outbound")
SUITE = "AES_CM_128_HMAC_SHA1_80"

SYNTHETIC_S = 4.0
"""Length of each synthetic signal."""
CHIRP_LOW_HZ, CHIRP_HIGH_HZ = 300.0, 3000.0
AMPLITUDE = 12_000
MAX_LEAD_IN_S = 1.5
"""The lags searched: where a track's first sample may land in the WAV (the gap between the
call's first packet and the track's, plus the Opus decoder's delay)."""
MIN_CORRELATION = 0.95
DURATION_TOLERANCE = 0.01
FFMPEG_TIMEOUT_S = 40.0
"""Longest ffmpeg may take for a call (the speech sample runs 9.4 s in real time)."""
PCMU_PACKET = 160
"""Samples per PCMU packet: 20 ms at 8 kHz."""
OPUS_FRAME = 960
"""Samples per Opus packet: 20 ms at 48 kHz."""
OPUS_PRESKIP = 312
"""libopus's encoder delay at 48 kHz (the Ogg pre-skip), which RTP does not signal."""
STDERR_TAIL = 3000


# --- signals --------------------------------------------------------------------------------


def chirp(seconds: float, rate: int, start_hz: float, end_hz: float) -> npt.NDArray[np.int16]:
    """A linear chirp from ``start_hz`` to ``end_hz``."""
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * (start_hz * t + (end_hz - start_hz) * t**2 / (2 * seconds))
    return (np.sin(phase) * AMPLITUDE).astype(np.int16)


def speech_sample() -> tuple[int, dict[str, npt.NDArray[np.int16]]]:
    """The demo call (``gateway/demo_data/sample_call.wav``): its rate, and its caller (left)
    and agent (right) channels as the inbound and outbound tracks."""
    data = resources.files("gateway.demo_data").joinpath("sample_call.wav").read_bytes()
    channels, rate, pcm = read_wav(data)
    assert channels == 2, f"sample_call.wav has {channels} channels, the test expects 2"
    return rate, {"inbound": pcm[:, 0].copy(), "outbound": pcm[:, 1].copy()}


def resample(samples: npt.NDArray[np.int16], rate: int, to: int) -> npt.NDArray[np.int16]:
    """Band-limited resampling by zero-padding the spectrum (``to`` a multiple of ``rate``;
    the sample starts and ends in silence, so treating it as periodic costs nothing)."""
    assert to % rate == 0
    factor = to // rate
    spectrum = np.fft.rfft(samples.astype(np.float64))
    out = np.fft.irfft(spectrum, n=samples.size * factor) * factor
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def write_wav(path: Path, samples: npt.NDArray[np.int16], rate: int) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return path


@dataclass(frozen=True)
class Codec:
    """How ffmpeg sends one codec, and what the gateway can at best give back."""

    name: str
    rate: int
    ffmpeg: tuple[str, ...]

    def reference(self, source: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        """The best the export can hold of ``source``: G.711 is lossy by design."""
        return ULAW.decode(ULAW.encode(source)) if self.name == "pcmu" else source

    def packets(self, samples: int) -> int:
        """Packets ffmpeg sends for ``samples`` of one track."""
        if self.name == "pcmu":
            return math.ceil(samples / PCMU_PACKET)
        return math.ceil((samples + OPUS_PRESKIP) / OPUS_FRAME)


PCMU = Codec(
    "pcmu",
    8000,
    ("-ac", "1", "-ar", "8000", "-af", f"asetnsamples=n={PCMU_PACKET}", "-c:a", "pcm_mulaw"),
)
OPUS = Codec(
    "opus",
    48_000,
    ("-ac", "1", "-ar", "48000", "-c:a", "libopus", "-frame_duration", "20", "-b:a", "64k"),
)


def signals(kind: str, codec: Codec) -> dict[str, npt.NDArray[np.int16]]:
    """The two tracks' sources at the codec's rate."""
    if kind == "synthetic":
        return {
            "inbound": chirp(SYNTHETIC_S, codec.rate, CHIRP_LOW_HZ, CHIRP_HIGH_HZ),
            "outbound": chirp(SYNTHETIC_S, codec.rate, CHIRP_HIGH_HZ, CHIRP_LOW_HZ),
        }
    rate, tracks = speech_sample()
    if rate == codec.rate:
        return tracks
    return {track: resample(samples, rate, codec.rate) for track, samples in tracks.items()}


# --- alignment ------------------------------------------------------------------------------


def align(
    exported: npt.NDArray[np.int16], reference: npt.NDArray[np.int16], max_lag: int
) -> tuple[int, float]:
    """(lag, correlation): where in ``exported`` the ``reference`` starts, searched over
    ``0..max_lag`` by normalized cross-correlation over the whole reference (the export is
    padded with silence, so a track cut short correlates less)."""
    ref = reference.astype(np.float64)
    x = np.zeros(max_lag + ref.size, np.float64)
    x[: min(exported.size, x.size)] = exported[: x.size]
    n = 1 << (x.size + ref.size).bit_length()
    dots = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(ref, n)), n)[: max_lag + 1]
    energy = np.concatenate(([0.0], np.cumsum(x**2)))
    windows = energy[ref.size : ref.size + max_lag + 1] - energy[: max_lag + 1]
    scores = dots / np.sqrt(np.maximum(windows, 1e-9) * float(ref @ ref))
    lag = int(np.argmax(scores))
    return lag, float(scores[lag])


# --- the sender -----------------------------------------------------------------------------


def sdes_params(crypto: str) -> str:
    """The base64 key and salt of an announcement's ``crypto`` value (after ``inline:``)."""
    suite, _, params = crypto.partition(" ")
    assert suite == SUITE and params.startswith("inline:"), "unexpected crypto suite"
    return params.removeprefix("inline:")


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "<key>")
    return text


async def send_with_ffmpeg(
    ffmpeg: str, codec: Codec, sources: dict[str, Path], offer: dict[str, Any]
) -> tuple[int, str]:
    """Run one ffmpeg with an SRTP output per track, each reading its WAV in real time;
    its exit status and the tail of its stderr (keys redacted). ffmpeg's stdout carries the
    SDP, keys included, so it is discarded."""
    args = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "warning"]
    for track in TRACKS:
        args += ["-re", "-i", str(sources[track])]
    keys = []
    for index, track in enumerate(TRACKS):
        key = sdes_params(offer["crypto"][track])
        keys.append(key)
        args += ["-map", f"{index}:a", *codec.ffmpeg, "-f", "rtp"]
        args += ["-srtp_out_suite", SUITE, "-srtp_out_params", key]
        args.append(f"srtp://{offer['host']}:{offer[track]}")
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), FFMPEG_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    tail = redact(stderr.decode(errors="replace"), keys)[-STDERR_TAIL:]
    assert process.returncode is not None
    return process.returncode, tail


# --- the test -------------------------------------------------------------------------------


@pytest.fixture
def ffmpeg() -> str:
    """The ffmpeg program (skips, or fails in CI, without it)."""
    found = shutil.which("ffmpeg")
    require_part(found is not None, "ffmpeg is not installed (Debian: apt-get install ffmpeg)")
    assert found is not None
    return found


@pytest.fixture
async def gateway(aiohttp_client: Callable[..., Any], tmp_path: Path) -> Gateway:
    """An in-process gateway on the wall clock, RTP ports from the default range."""
    settings = Settings(
        data_dir=tmp_path / "var", audiosocket=AudioSocketSettings(port=free_port())
    )
    client = await aiohttp_client(GatewayServer(build_app(settings)))
    return await start_gateway(client)


@pytest.mark.parametrize("kind", ["synthetic", "speech"])
@pytest.mark.parametrize("codec", [PCMU, OPUS], ids=lambda codec: codec.name)
async def test_ffmpeg_srtp_call_is_recorded_faithfully(
    ffmpeg: str, gateway: Gateway, tmp_path: Path, codec: Codec, kind: str
) -> None:
    """A call ffmpeg sends as SRTP (both tracks, different signals) comes back in the export
    as sent: each track correlates >= 0.95 with its source, the exported duration after the
    lead-in is the source's within 1 %, every packet counted as audio and none refused."""
    acme = await gateway.tenant("acme", ON)
    announced = await gateway.announce(acme, transport="rtp", codec=codec.name)
    offer = announced["ingest"]["rtp"]
    assert offer["srtp"] is True

    sources = signals(kind, codec)
    length = sources["inbound"].size
    assert sources["outbound"].size == length
    files = {
        track: write_wav(tmp_path / f"{track}.wav", samples, codec.rate)
        for track, samples in sources.items()
    }
    status, stderr = await send_with_ffmpeg(ffmpeg, codec, files, offer)
    assert status == 0, f"ffmpeg exited with {status}:\n{stderr}"

    response = await gateway.client.post(
        f"/v1/calls/{announced['call_id']}/end", headers=bearer(acme.pbx)
    )
    assert response.status == 200, await response.text()
    metrics = await (await gateway.client.get("/metrics")).text()
    response = await gateway.client.get(
        f"/v1/recordings/{announced['recording_id']}/audio", headers=bearer(acme.admin)
    )
    assert response.status == 200, await response.text()
    channels, rate, pcm = read_wav(await response.read())
    assert (channels, rate) == (2, codec.rate)

    def datagrams(outcome: str) -> float:
        return metric_value(metrics, "callvault_rtp_datagrams_total", outcome=outcome)

    dropped = {reason: datagrams(reason) for reason in DROP_REASONS if reason != "rtcp"}
    assert dropped == dict.fromkeys(dropped, 0.0), stderr
    assert {"auth_failed", "replay", "malformed"} <= dropped.keys()  # the ones the issue names
    assert datagrams("rtcp") > 0, "ffmpeg's RTCP sender reports did not reach port + 1"
    packets = 2 * codec.packets(length)
    frames_in = metric_value(metrics, "callvault_frames_in_total", transport="rtp")
    assert (datagrams("audio"), frames_in) == (packets, packets), stderr

    lags = {}
    for column, track in enumerate(TRACKS):
        reference = codec.reference(sources[track])
        lag, correlation = align(pcm[:, column], reference, int(MAX_LEAD_IN_S * codec.rate))
        print(f"{codec.name} {kind} {track}: lag {lag} samples, correlation {correlation:.4f}")
        assert correlation >= MIN_CORRELATION, (track, lag, correlation)
        lags[track] = lag
    exported = pcm.shape[0] - max(lags.values())
    print(f"{codec.name} {kind}: {exported} samples after the lead-in, source {length}")
    assert abs(exported - length) <= DURATION_TOLERANCE * length, (pcm.shape[0], lags, length)
