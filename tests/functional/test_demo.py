"""``callvault demo`` against a real gateway in-process, and the sample call it ships.

The demo talks to the server over real sockets (aiohttp's ``TestServer``), so these tests
check it exactly as a user runs it, and check the gateway too: the WAV it hands back must be
the µ-law round trip of the packaged sample, sample for sample.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from ai.pipeline import Analyzer
from gateway.app import build_app
from gateway.auth import ensure_operator_token
from gateway.demo import FRAME_SAMPLES, SampleCall, load_sample_call, run_demo, twilio_messages
from gateway.services import build_worker
from gateway.settings import Settings
from gateway.state import CLOCK, SERVICES, SETTINGS
from tests.ai import ScriptedTranscriber
from tests.gateway import ULAW, free_port, read_wav

TOKEN_SHAPE = re.compile(r"cv_[A-Za-z0-9_-]{20,}")


@pytest.fixture
async def server(
    aiohttp_server: Callable[..., Any], tmp_path: Path
) -> AsyncIterator[tuple[TestServer, str]]:
    """A started gateway on a real port (AudioSocket off) and its operator token."""
    app = build_app(Settings(data_dir=tmp_path / "var", audiosocket={"port": 0}))
    started: TestServer = await aiohttp_server(app)
    operator = await ensure_operator_token(app[SERVICES].catalog, None, now=datetime.now(UTC))
    assert operator is not None
    yield started, operator


def base_url(server: TestServer) -> str:
    return str(server.make_url("/"))


def script_turns() -> list[tuple[float, str, str]]:
    """(start second, speaker, text) of each turn in sample_call.txt."""
    text = resources.files("gateway.demo_data").joinpath("sample_call.txt").read_text()
    turns = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            start, speaker, words = line.split(maxsplit=2)
            turns.append((float(start), speaker, words))
    return turns


# --- the sample call ---------------------------------------------------------------------


def test_sample_call_is_a_short_two_sided_telephone_call() -> None:
    sample = load_sample_call()
    assert sample.sample_rate == 8000
    assert 6.0 <= sample.duration_s <= 10.0
    assert len(sample.inbound) % FRAME_SAMPLES == 0  # whole 20 ms frames, as a PBX sends
    # Both sides speak, and a side is silent while the other speaks (no crosstalk).
    for side in (sample.inbound, sample.outbound):
        assert np.abs(side).max() > 8000
    both = (np.abs(sample.inbound) > 0) & (np.abs(sample.outbound) > 0)
    assert not both.any()


def test_script_matches_the_audio() -> None:
    """Each turn of sample_call.txt starts where its speaker's channel starts speaking, and
    the speakers alternate, caller first."""
    sample = load_sample_call()
    turns = script_turns()
    assert [speaker for _, speaker, _ in turns] == ["caller", "agent"] * (len(turns) // 2)
    assert len(turns) >= 4
    channels = {"caller": sample.inbound, "agent": sample.outbound}
    for start, speaker, words in turns:
        assert len(words.split()) >= 3
        at = round(start * sample.sample_rate)
        channel = channels[speaker]
        assert not channel[at - 40 : at].any()  # silent just before the turn
        assert channel[at : at + 400].any()  # speaking from its first samples
    text = resources.files("gateway.demo_data").joinpath("sample_call.txt").read_text()
    assert "espeak-ng -v" in text and "bench/make_sample_call.py" in text


def test_twilio_messages_carry_the_sample_exactly() -> None:
    sample = SampleCall(
        8000,
        np.arange(-500, 500, 3, dtype=np.int16)[:330],
        np.arange(330, dtype=np.int16) * 7,
    )
    messages = list(twilio_messages(sample, "call-1", stream_sid="MZ1"))
    events = [json.loads(text)["event"] for _, text in messages]
    assert events[:2] == ["connected", "start"] and events[-1] == "stop"
    start = json.loads(messages[1][1])["start"]
    assert start["customParameters"] == {"call_id": "call-1"}
    assert start["tracks"] == ["inbound", "outbound"]
    media = [json.loads(text)["media"] for _, text in messages[2:-1]]
    assert len(media) == 6  # 330 samples: 160 + 160 + 10 per track
    payload: dict[str, bytes] = {"inbound": b"", "outbound": b""}
    for message in media:
        payload[message["track"]] += base64.b64decode(message["payload"])
    assert [m["timestamp"] for m in media] == ["0", "0", "20", "20", "40", "40"]
    assert payload["inbound"] == ULAW.encode(sample.inbound)
    assert payload["outbound"] == ULAW.encode(sample.outbound)
    # Paced like a PBX: a frame leaves once captured, stop after the last frame.
    assert [at for at, _ in messages] == [0.0, 0.0, 0.02, 0.02, 0.04, 0.04, 0.06, 0.06, 0.06]
    sequences = [int(json.loads(text)["sequenceNumber"]) for _, text in messages[1:]]
    assert sequences == list(range(1, len(messages)))


# --- run_demo against a real server --------------------------------------------------------


async def test_demo_stores_and_returns_the_sample_call(
    server: tuple[TestServer, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_server, operator = server
    out = tmp_path / "demo-call.wav"
    app = test_server.app
    worker = build_worker(
        app[SETTINGS],
        app[SERVICES],
        now=app[CLOCK].now,
        analyzer=Analyzer(lambda: ScriptedTranscriber()),
    )
    working = asyncio.create_task(worker.run())
    try:
        assert await run_demo(base_url(test_server), operator, out=out) == 0
    finally:
        working.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await working
        await worker.close()

    printed = capsys.readouterr()
    catalog = test_server.app[SERVICES].catalog
    [tenant] = await catalog.tenants.list()
    assert re.fullmatch(r"demo-[0-9a-f]{6}", tenant.id) and tenant.name == "Demo tenant"
    [(recording, call)] = await catalog.recordings.list_entries(tenant.id)
    assert (call.from_number, call.to_number) == ("+40215550100", "+40215550199")
    assert re.search(rf"^\s+id\s+{re.escape(recording.id)}$", printed.out, re.M)
    status = re.search(r"^\s+status\s+(\S+)$", printed.out, re.M)
    assert status is not None and status.group(1) == "processing"  # when it was printed
    assert recording.status == "analyzed"
    assert re.search(r"^\s+tracks\s+inbound .*outbound", printed.out, re.M)
    assert re.search(r"^\s+instructions\s+version 1$", printed.out, re.M)
    assert str(out) in printed.out
    assert re.search(r"^transcript \(en, scripted\)$", printed.out, re.M)
    assert re.search(r"^  summary       Caller: ", printed.out, re.M)
    assert re.search(r"^  talk/listen   caller \d", printed.out, re.M)
    assert printed.err == ""
    assert operator not in printed.out
    assert not TOKEN_SHAPE.search(printed.out)  # nor the admin and pbx tokens it minted

    sample = load_sample_call()
    channels, rate, pcm = read_wav(out.read_bytes())
    assert (channels, rate) == (2, 8000)
    assert pcm.shape == (len(sample.inbound), 2)
    np.testing.assert_array_equal(pcm[:, 0], ULAW.decode(ULAW.encode(sample.inbound)))
    np.testing.assert_array_equal(pcm[:, 1], ULAW.decode(ULAW.encode(sample.outbound)))


async def test_demo_says_when_no_ai_worker_analyses_the_call(
    server: tuple[TestServer, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_server, operator = server  # CALLVAULT_AI__WORKERS=0 in tests: nobody takes the job
    out = tmp_path / "demo-call.wav"
    assert await run_demo(base_url(test_server), operator, out=out, analysis_wait_s=0.3) == 0
    printed = capsys.readouterr().out
    assert "no AI worker finished the call in time" in printed
    assert "CALLVAULT_AI__WORKERS" in printed
    assert not re.search(r"^transcript", printed, re.M)
    assert out.exists()


async def test_demo_refuses_a_wrong_operator_token(
    server: tuple[TestServer, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_server, _ = server
    out = tmp_path / "demo-call.wav"

    assert await run_demo(base_url(test_server), "cv_not-a-token", out=out) == 1

    printed = capsys.readouterr()
    assert "did not accept the operator token" in printed.err
    assert "callvault token create --role operator" in printed.err
    assert len(printed.err.strip().splitlines()) == 1
    assert "cv_not-a-token" not in printed.err + printed.out
    assert not out.exists()
    assert await test_server.app[SERVICES].catalog.tenants.list() == []


async def test_demo_names_an_unreachable_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "demo-call.wav"

    assert await run_demo(url, "cv_whatever", out=out) == 1

    err = capsys.readouterr().err
    assert url in err and "make run" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


async def test_demo_refuses_a_url_that_is_not_http(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_demo("localhost:8080", "cv_whatever", out=Path("unused.wav")) == 1
    assert "http://" in capsys.readouterr().err


def test_cli_demo_without_a_token_names_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLVAULT_")}
    callvault = Path(sys.executable).with_name("callvault")
    command = [str(callvault)] if callvault.exists() else [sys.executable, "-m", "gateway.cli"]
    result = subprocess.run(  # noqa: S603 - our own command line
        [*command, "demo", "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "CALLVAULT_OPERATOR_TOKEN" in result.stderr
    assert not (tmp_path / "demo-call.wav").exists()
