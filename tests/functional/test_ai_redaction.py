"""Redaction through the app: a call whose instructions say ``ai.redaction`` is analysed, and
what the API serves (transcript, analysis) holds tags where the caller said personal data,
the entity list with types and times, and none of the values; without the instruction the
same call keeps them (so the first test can fail).

The model is the scripted test double, made to "say" a card number, an e-mail address and
a name (``ScriptedTranscriber(script=...)``); the real model's spans are measured by
``bench/redaction.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ai.worker import AnalysisWorker
from tests.ai import ALL_AI, RECORDED, ScriptedTranscriber, get, push, sample_call
from tests.gateway import Gateway

SAID = [
    "My card number is 4532 0151 1283 0366, thanks.",
    "You can write to ana.pop@yahoo.ro and my name is Sarah Connor.",
]
VALUES = ("4532", "0151", "0366", "ana.pop", "yahoo", "Connor")


def redacting(**rule: Any) -> dict[str, Any]:
    return {
        "recording": {"enabled": True},
        "ai": {**ALL_AI, "redaction": {"transcript": True, **rule}},
    }


@pytest.fixture
def transcriber() -> ScriptedTranscriber:
    return ScriptedTranscriber(script=SAID)


async def results(gw: Gateway, token: str, recording_id: str) -> tuple[Any, Any]:
    status, transcript = await get(gw, f"/v1/recordings/{recording_id}/transcript", token)
    assert status == 200, transcript
    status, analysis = await get(gw, f"/v1/recordings/{recording_id}/analysis", token)
    assert status == 200, analysis
    return transcript, analysis


async def test_the_transcript_and_the_analysis_are_redacted(
    gw: Gateway, worker: AnalysisWorker
) -> None:
    tenant = await gw.tenant("acme", redacting())
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    assert await worker.run_once() is True
    transcript, analysis = await results(gw, tenant.processor, recording_id)
    text = " ".join(segment["text"] for segment in transcript["segments"])
    assert "My card number is [CARD_NUMBER], thanks." in text
    assert "You can write to [EMAIL] and my name is [PERSON_NAME]." in text
    for document in (transcript, analysis):  # the summary and key phrases included
        dumped = json.dumps(document)
        assert not [value for value in VALUES if value in dumped], dumped
    entities = transcript["redaction"]["entities"]
    assert [e["type"] for e in entities] == ["card_number", "email", "person_name"]
    said = [s for s in transcript["segments"] if "[" in s["text"]]
    for entity in entities:  # each span lies within the segment that said it
        assert set(entity) == {"type", "track", "start", "end"}
        assert any(
            s["track"] == entity["track"] and s["start"] <= entity["start"] < entity["end"]
            and entity["end"] <= s["end"] + 0.01
            for s in said
        ), entity  # fmt: skip
    assert analysis["redaction"] == transcript["redaction"]
    assert analysis["redaction"]["transcript"] is True
    assert analysis["redaction"]["audio"] is False


async def test_only_the_instructed_kinds_are_redacted(gw: Gateway, worker: AnalysisWorker) -> None:
    tenant = await gw.tenant("acme", redacting(entities=["card_number"]))
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    assert await worker.run_once() is True
    transcript, _ = await results(gw, tenant.admin, recording_id)
    text = " ".join(segment["text"] for segment in transcript["segments"])
    assert "[CARD_NUMBER]" in text
    assert "ana.pop@yahoo.ro" in text and "Sarah Connor" in text
    assert [e["type"] for e in transcript["redaction"]["entities"]] == ["card_number"]


async def test_without_the_instruction_the_values_stay(gw: Gateway, worker: AnalysisWorker) -> None:
    tenant = await gw.tenant("acme", RECORDED)
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    assert await worker.run_once() is True
    transcript, analysis = await results(gw, tenant.admin, recording_id)
    text = " ".join(segment["text"] for segment in transcript["segments"])
    assert "4532 0151 1283 0366" in text
    assert "redaction" not in transcript and "redaction" not in analysis
