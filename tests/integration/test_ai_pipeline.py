"""The AI pipeline end to end with the real model, through real processes and sockets.

``callvault serve`` runs as a subprocess with its AI worker child and a packaged model;
the shipped sample calls (eSpeak NG, 8 kHz µ-law, two speakers, known text) are pushed over
Twilio Media Streams on a real socket; the transcript and the analysis are fetched over
HTTP and compared with the calls' scripts: word error rate per track (reported, bounded),
words on the right track, talk time per track within 10 %, only instructed features. A
``callvault worker`` process is SIGKILLed mid-job and another one finishes the job once.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.ai import SampleCall, sample_call, wer, words
from tests.gateway import bearer, callvault, callvault_env, serve
from tests.served import fetch, push_call, tenant, wait_for_status

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 60.0
ALL_AI = {"transcript": True, "summary": True, "sentiment": True, "talk_listen": True,
          "topics": True}  # fmt: skip
CATEGORIES = {"cancellation": ["cancel", "terminate"], "billing": ["refund", "invoice"],
              "technical": ["router", "internet"]}  # fmt: skip
TINY_WER_BOUND = 0.6
"""tiny.en on eSpeak NG telephone speech: 15-47 % measured (DESIGN.md); a bound that a
broken pipeline (wrong track, wrong rate, no audio) cannot meet: those give 90-100 %."""
BASE_RO_RECALL_BOUND = 0.2


def track_text(transcript: dict[str, Any], track: str) -> str:
    return " ".join(s["text"] for s in transcript["segments"] if s["track"] == track)


def check_transcript(
    call: SampleCall, transcript: dict[str, Any], bound: float
) -> dict[str, float]:
    """WER per track against the script, bounded; each track's words are its own (far
    closer to its own script than to the other side's). Returns the WERs."""
    rates = {}
    for track, other in (("inbound", "outbound"), ("outbound", "inbound")):
        heard = track_text(transcript, track)
        rates[track] = wer(call.text[track], heard)
        assert rates[track] <= bound, (track, rates[track], heard)
        assert wer(call.text[other], heard) > rates[track] + 0.3, (track, heard)
    print(f"\n{call.name}: WER {transcript['model']} " + ", ".join(
        f"{track} {rate:.3f}" for track, rate in rates.items()
    ))  # fmt: skip
    return rates


def check_talk(call: SampleCall, talk: dict[str, Any]) -> None:
    for track in ("inbound", "outbound"):
        assert talk["tracks"][track]["talk_s"] == pytest.approx(call.talk_s[track], rel=0.10)
    expected = call.talk_s["outbound"] / call.talk_s["inbound"]
    assert talk["talk_to_listen"] == pytest.approx(expected, rel=0.15)
    # Silero VAD finds a turn's start ~0.2 s late and its end ~0.2 s early, which cancels in
    # talk time but shortens an overlap by both: 0.8 s of overlap measures about 0.45 s.
    assert talk["overlap_s"] == pytest.approx(call.script["overlap_s"], abs=0.4)


async def test_sample_calls_end_to_end_with_the_packaged_test_model(tmp_path: Path) -> None:
    with serve(
        tmp_path, "var", CALLVAULT_AI__MODEL="tiny.en", CALLVAULT_AI__WORKERS="1",
        CALLVAULT_AI__POLL_INTERVAL="PT0.2S",
    ) as server:  # fmt: skip
        async with aiohttp.ClientSession(server.base) as session:
            ai_only = await tenant(
                session,
                server,
                "acme",
                {"recording": {"enabled": False},
                 "ai": {**ALL_AI, "language": "en", "categories": CATEGORIES}},
            )  # fmt: skip
            partial = await tenant(
                session,
                server,
                "beta",
                {"recording": {"enabled": True}, "ai": {"transcript": True, "talk_listen": True}},
            )
            calls = {name: sample_call(name) for name in ("support", "cancellation")}
            recordings = {
                name: await push_call(session, "acme", ai_only["pbx"], c.inbound, c.outbound)
                for name, c in calls.items()
            }
            beta = await push_call(
                session, "beta", partial["pbx"], calls["support"].inbound,
                calls["support"].outbound,
            )  # fmt: skip
            for name, recording_id in recordings.items():
                call = calls[name]
                view = await wait_for_status(
                    session, recording_id, ai_only["processor"], server.process
                )
                assert (view["status"], view["audio_purged"]) == ("analyzed", True)
                status, transcript = await fetch(
                    session, f"/v1/recordings/{recording_id}/transcript", ai_only["processor"]
                )
                assert status == 200
                assert (transcript["model"], transcript["language"]) == ("tiny.en", "en")
                check_transcript(call, transcript, TINY_WER_BOUND)
                status, analysis = await fetch(
                    session, f"/v1/recordings/{recording_id}/analysis", ai_only["processor"]
                )
                assert status == 200
                assert set(analysis) == {
                    "language", "model", "duration_s", "summary", "sentiment",
                    "talk_listen", "topics",
                }  # fmt: skip
                check_talk(call, analysis["talk_listen"])
                sentences = analysis["summary"].count("Caller: ") + analysis["summary"].count(
                    "Agent: "
                )
                assert 3 <= sentences <= 5, analysis["summary"]
                print(f"{name}: summary {analysis['summary']!r}")
                print(f"{name}: sentiment {analysis['sentiment']['tracks']}")
                async with session.get(
                    f"/v1/recordings/{recording_id}/audio", headers=bearer(ai_only["admin"])
                ) as r:
                    assert r.status == 410
            cancellation = analysis  # the last one
            categories = {c["name"]: c for c in cancellation["topics"]["categories"]}
            assert "cancellation" in categories
            assert categories["cancellation"]["tracks"]["inbound"] >= 1
            assert cancellation["talk_listen"]["interruptions"] >= 1
            # The caller is polite and leaving: the cue makes it read negative.
            assert cancellation["sentiment"]["tracks"]["inbound"]["label"] == "negative"
            assert any(cue["track"] == "inbound" for cue in cancellation["sentiment"]["cues"])

            view = await wait_for_status(session, beta, partial["processor"], server.process)
            assert (view["status"], view["audio_purged"]) == ("analyzed", False)
            status, analysis = await fetch(
                session, f"/v1/recordings/{beta}/analysis", partial["processor"]
            )
            assert status == 200
            assert set(analysis) == {"language", "model", "duration_s", "talk_listen"}
            async with session.get(
                f"/v1/recordings/{beta}/audio", headers=bearer(partial["admin"])
            ) as r:
                assert r.status == 200  # a recorded call keeps its audio


async def test_a_romanian_call_with_the_default_multilingual_model(tmp_path: Path) -> None:
    call = sample_call("romanian")
    with serve(
        tmp_path, "var", CALLVAULT_AI__WORKERS="1", CALLVAULT_AI__POLL_INTERVAL="PT0.2S"
    ) as server:  # the default model: base
        async with aiohttp.ClientSession(server.base) as session:
            tokens = await tenant(
                session, server, "acme",
                # "ro": with "auto", base hears eSpeak's Romanian as Latin ("la").
                {"recording": {"enabled": False}, "ai": {"transcript": True, "language": "ro"}},
            )  # fmt: skip
            recording_id = await push_call(
                session, "acme", tokens["pbx"], call.inbound, call.outbound
            )
            view = await wait_for_status(session, recording_id, tokens["processor"], server.process)
            assert view["status"] == "analyzed", view
            status, transcript = await fetch(
                session, f"/v1/recordings/{recording_id}/transcript", tokens["processor"]
            )
    assert status == 200
    assert (transcript["model"], transcript["language"]) == ("base", "ro")
    # base on eSpeak NG's Romanian voices is poor (WER near 100 %, many insertions), so
    # WER is reported, and what is bounded is recall: most of each side's words are heard,
    # and on that side's track.
    rates = {track: wer(call.text[track], track_text(transcript, track)) for track in call.text}
    print(f"\nromanian: WER base {rates}")
    for track, other in (("inbound", "outbound"), ("outbound", "inbound")):
        heard = set(words(track_text(transcript, track)))
        own = recall(words(call.text[track]), heard)
        print(f"romanian: {track} recall {own:.3f}")
        assert own >= BASE_RO_RECALL_BOUND, (track, own, heard)
        others = recall(words(call.text[other]), heard)
        print(f"romanian: {track} recall of the other side's words {others:.3f}")
        assert others < own - 0.1, (track, heard)


def recall(reference: list[str], heard: set[str]) -> float:
    """Share of the reference's words that were heard (anywhere in the track)."""
    return sum(word in heard for word in reference) / max(1, len(reference))


def job_row(data_dir: Path, recording_id: str) -> tuple[str, int, str | None]:
    with sqlite3.connect(data_dir / "catalog.sqlite3", timeout=10) as db:
        row = db.execute(
            "SELECT status, attempts, lease_owner FROM jobs WHERE recording_id = ?",
            (recording_id,),
        ).fetchone()
    return row[0], row[1], row[2]


def result_objects(data_dir: Path, recording_id: str) -> list[tuple[str, str]]:
    with sqlite3.connect(data_dir / "catalog.sqlite3", timeout=10) as db:
        rows = db.execute(
            "SELECT kind, state FROM objects WHERE recording_id = ? AND kind != 'audio' "
            "ORDER BY kind, state",
            (recording_id,),
        ).fetchall()
    return [(kind, state) for kind, state in rows]


async def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes_once(
    tmp_path: Path,
) -> None:
    call = sample_call("support")
    with serve(tmp_path, "var", CALLVAULT_AI__WORKERS="0") as server:
        async with aiohttp.ClientSession(server.base) as session:
            tokens = await tenant(
                session, server, "acme", {"recording": {"enabled": True}, "ai": ALL_AI}
            )
            # Two minutes of call, so that the kill lands while the model works.
            recording_id = await push_call(
                session, "acme", tokens["pbx"], call.inbound * 4, call.outbound * 4
            )
            assert job_row(server.data_dir, recording_id)[0] == "queued"
            env = callvault_env(
                server.data_dir,
                CALLVAULT_AI__MODEL="tiny.en",
                CALLVAULT_AI__LEASE="PT3S",
                CALLVAULT_AI__POLL_INTERVAL="PT0.1S",
            )
            with callvault("worker", tmp_path / "worker-1.log", env) as first:
                deadline = time.monotonic() + READY_TIMEOUT_S
                while job_row(server.data_dir, recording_id)[0] != "running":
                    assert time.monotonic() < deadline, first.log()
                    await asyncio.sleep(0.02)  # polling another process's progress
                _, attempts, dead_owner = job_row(server.data_dir, recording_id)
                await asyncio.sleep(0.5)  # into the transcription
                first.process.send_signal(signal.SIGKILL)
                first.process.wait(timeout=10)
            assert job_row(server.data_dir, recording_id)[:2] == ("running", 1), first.log()
            assert result_objects(server.data_dir, recording_id) == []
            with callvault("worker", tmp_path / "worker-2.log", env) as second:
                view = await wait_for_status(session, recording_id, tokens["processor"], second)
                second.process.send_signal(signal.SIGTERM)
                assert second.process.wait(timeout=15) == 0, second.log()
            assert view["status"] == "analyzed"
            status, owner = job_row(server.data_dir, recording_id)[::2]
            assert (status, job_row(server.data_dir, recording_id)[1]) == ("done", 2)
            assert owner != dead_owner
            assert result_objects(server.data_dir, recording_id) == [
                ("analysis", "committed"),
                ("transcript", "committed"),
            ]
            status, transcript = await fetch(
                session, f"/v1/recordings/{recording_id}/transcript", tokens["processor"]
            )
            assert status == 200
            assert transcript["segments"][-1]["end"] > 100  # the whole two minutes
    assert attempts == 1
