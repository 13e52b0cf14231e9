"""Redaction through the app: a call whose instructions say ``ai.redaction`` is analysed, and
what the API serves (transcript, analysis) holds tags where the caller said personal data,
the entity list with types and times, and none of the values; without the instruction the
same call keeps them (so the first test can fail). With ``audio`` the recording itself is
rewritten (silence or a tone over each padded span, every other sample untouched), the
original objects are crypto-shredded, and a swap killed midway is finished by the retry.

The model is the scripted test double, made to "say" a card number, an e-mail address and
a name (``ScriptedTranscriber(script=...)``); the real model's spans are measured by
``bench/redaction.py``.
"""

from __future__ import annotations

import io
import json
import wave
import zipfile
from typing import Any

import numpy as np
import pytest

from ai.worker import AnalysisWorker
from crypto.errors import KeyUnavailable
from gateway.settings import Settings
from gateway.state import SERVICES
from storage.catalog import StoredObject
from storage.media.codecs import codec
from tests.ai import (
    AI_BACKOFF_S,
    AI_LEASE_S,
    ALL_AI,
    RECORDED,
    Killed,
    ScriptedTranscriber,
    audit_details,
    get,
    job_of,
    new_worker,
    push,
    sample_call,
)
from tests.gateway import FakeClock, Gateway

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


def channels(wav: bytes) -> tuple[int, np.ndarray, np.ndarray]:
    """The sample rate and the inbound (left) and outbound (right) channels of a WAV."""
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2").reshape(-1, 2)
    return rate, pcm[:, 0].astype(np.int32), pcm[:, 1].astype(np.int32)


async def audio_objects(gw: Gateway, recording_id: str) -> list[StoredObject]:
    objects = await gw.app[SERVICES].catalog.objects.list("acme", recording_id=recording_id)
    return [o for o in objects if o.kind.startswith("audio") and o.state != "deleted"]


@pytest.mark.parametrize("fill", ["silence", "tone"])
async def test_the_audio_is_redacted_and_the_original_shredded(
    gw: Gateway, worker: AnalysisWorker, fill: str
) -> None:
    tenant = await gw.tenant("acme", redacting(audio=True, fill=fill, padding_ms=300))
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    originals = await audio_objects(gw, recording_id)
    # Until the analysis has redacted it, the audio is served to nobody.
    status, refused = await get(gw, f"/v1/recordings/{recording_id}/audio", tenant.admin)
    assert (status, refused["error"]) == (409, "audio_not_redacted")
    _, view = await get(gw, f"/v1/recordings/{recording_id}", tenant.admin)
    assert view["status"] == "processing"
    assert await worker.run_once() is True

    (event,) = await audit_details(gw, "acme", "audio.redacted")  # one: inbound said it all
    assert event["track"] == "inbound"
    assert [s["type"] for s in event["spans"]] == ["card_number", "email", "person_name"]
    transcript, _ = await results(gw, tenant.admin, recording_id)
    for span, said in zip(event["spans"], transcript["redaction"]["entities"], strict=True):
        # Padded by 300 ms either side of the words (clamped at the call's start).
        assert span["start"] == pytest.approx(max(0.0, said["start"] - 0.3), abs=0.011)
        assert span["end"] == pytest.approx(said["end"] + 0.3, abs=0.011)
    assert (event["fill"], event["padding_ms"]) == (fill, 300)

    status, after = await get(gw, f"/v1/recordings/{recording_id}/audio", tenant.admin)
    assert status == 200
    rate, left_after, right_after = channels(after)
    # What was streamed in (the WAV of the unredacted tracks is their µ-law decoded).
    call = sample_call("support")
    left_before = codec("pcmu").decode(call.inbound).astype(np.int32)
    right_before = codec("pcmu").decode(call.outbound).astype(np.int32)
    assert len(left_after) == len(left_before)  # the timeline did not move
    masked = np.zeros(len(left_before), dtype=bool)
    for span in event["spans"]:
        masked[int((span["start"] + 0.01) * rate) : int((span["end"] - 0.01) * rate)] = True
    assert np.abs(left_before[masked]).max() > 1000  # speech was there (the test can fail)
    if fill == "silence":
        assert not left_after[masked].any()
    else:
        first = event["spans"][0]
        stretch = left_after[int(first["start"] * rate) + 1 : int(first["end"] * rate) - 1]
        spectrum = np.abs(np.fft.rfft(stretch))
        assert np.fft.rfftfreq(len(stretch), 1 / rate)[spectrum.argmax()] == pytest.approx(
            1000, abs=5
        )
        assert 7000 < np.abs(stretch).max() < 9000  # -12 dBFS, through G.711
    # Outside the spans, and on the other track, every sample is as it was.
    # The audit rounds times to 10 ms: a sample that close to a span's edge may be either.
    near = np.zeros(len(left_before), dtype=bool)
    for span in event["spans"]:
        near[max(0, int((span["start"] - 0.01) * rate)) : int((span["end"] + 0.01) * rate)] = True
    assert np.array_equal(left_after[~near], left_before[~near])
    assert np.array_equal(right_after, right_before)

    catalog = gw.app[SERVICES].catalog
    inbound = [o for o in originals if o.track == "inbound"]
    assert sorted(event["objects_shredded"]) == sorted(o.id for o in inbound)
    for stored in inbound:  # crypto-shredded: no DEK, the row deleted
        with pytest.raises(KeyUnavailable):
            await catalog.keys.get(stored.id, "acme")
        assert (await catalog.objects.get(stored.id, "acme")).state == "deleted"
    now = await audio_objects(gw, recording_id)
    assert {(o.kind, o.track) for o in now} == {("audio", "inbound"), ("audio", "outbound")}
    assert [o.id for o in now if o.track == "inbound"] == [event["object_created"]]
    status, view = await get(gw, f"/v1/recordings/{recording_id}", tenant.admin)
    assert (view["status"], view["audio_purged"]) == ("analyzed", False)


async def test_without_audio_redaction_the_audio_stays(gw: Gateway, worker: AnalysisWorker) -> None:
    tenant = await gw.tenant("acme", redacting())  # the transcript only
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    _, before = await get(gw, f"/v1/recordings/{recording_id}/audio", tenant.admin)
    assert await worker.run_once() is True
    _, after = await get(gw, f"/v1/recordings/{recording_id}/audio", tenant.admin)
    assert after == before
    assert await audit_details(gw, "acme", "audio.redacted") == []


@pytest.mark.parametrize("dies_at", ["relabel", "shred", "mid_shred"])
async def test_a_swap_killed_midway_is_finished_by_the_retry(
    gw: Gateway,
    gateway_settings: Settings,
    clock: FakeClock,
    worker: AnalysisWorker,
    monkeypatch: pytest.MonkeyPatch,
    dies_at: str,
) -> None:
    tenant = await gw.tenant("acme", redacting(audio=True))
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    catalog = gw.app[SERVICES].catalog
    before = await audio_objects(gw, recording_id)
    dying = new_worker(gw, gateway_settings, clock, ScriptedTranscriber(script=SAID))
    if dies_at == "relabel":  # the originals are shredded, the copy is not the audio yet

        async def relabel(*args: Any, **kwargs: Any) -> None:
            raise Killed

        monkeypatch.setattr(catalog.objects, "relabel", relabel)
    else:  # the copy is committed, the originals not yet shredded (or one half-shredded:
        # its DEK destroyed, its row not yet marked deleted)
        vault = gw.app[SERVICES].vault
        shred = vault.shred_object

        async def shred_then_die(tenant: str, object_id: str, *, now: Any) -> None:
            stored = await catalog.objects.get(object_id, tenant)
            if stored.kind == "audio":
                if dies_at == "mid_shred":
                    await catalog.keys.delete(object_id)
                raise Killed
            await shred(tenant, object_id, now=now)

        monkeypatch.setattr(vault, "shred_object", shred_then_die)
    with pytest.raises(Killed):
        await dying.run_once()
    monkeypatch.undo()
    # Audited once the originals are shredded, before the relabel: a death after it is
    # audited again by the retry (twice at worst, never not at all).
    killed = await audit_details(gw, "acme", "audio.redacted")
    assert len(killed) == (1 if dies_at == "relabel" else 0)
    clock.advance(AI_LEASE_S + 1)
    assert await worker.run_once() is True  # takes the job up: the results are complete

    events = await audit_details(gw, "acme", "audio.redacted")
    assert len(events) == len(killed) + 1
    event = events[-1]
    assert [s["type"] for s in event["spans"]] == ["card_number", "email", "person_name"]
    originals = [o for o in before if o.track == "inbound"]
    assert sorted(event["objects_shredded"]) == sorted(o.id for o in originals)
    for original in originals:
        assert (await catalog.objects.get(original.id, "acme")).state == "deleted"
    now = await audio_objects(gw, recording_id)
    assert {(o.kind, o.track) for o in now} == {("audio", "inbound"), ("audio", "outbound")}
    status, after = await get(gw, f"/v1/recordings/{recording_id}/audio", tenant.admin)
    rate, left, _ = channels(after)
    first = event["spans"][0]
    assert not left[int(first["start"] * rate) + 1 : int(first["end"] * rate) - 1].any()
    assert (await job_of(gw, "acme", recording_id)).status == "done"


async def test_the_original_transcript_is_kept_only_when_instructed(
    gw: Gateway, worker: AnalysisWorker
) -> None:
    tenant = await gw.tenant("acme", redacting(keep_original=True))
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    assert await worker.run_once() is True
    path = f"/v1/recordings/{recording_id}/transcript/original"
    status, original = await get(gw, path, tenant.admin)
    assert status == 200
    text = " ".join(segment["text"] for segment in original["segments"])
    assert "4532 0151 1283 0366" in text and "redaction" not in original
    status, _ = await get(gw, path, tenant.processor)
    assert status == 403  # admins only
    reads = await audit_details(gw, "acme", "transcript.original.read")
    assert len(reads) == 1
    redacted, _ = await results(gw, tenant.processor, recording_id)
    assert "4532" not in json.dumps(redacted)

    other = await gw.tenant("other", redacting())  # keep_original off: never stored
    recording_id = (await push(gw, other, sample_call("support")))["recording_id"]
    assert await worker.run_once() is True
    status, body = await get(gw, f"/v1/recordings/{recording_id}/transcript/original", other.admin)
    assert (status, body["error"]) == (404, "original_not_kept")
    objects = await gw.app[SERVICES].catalog.objects.list("other", recording_id=recording_id)
    assert "transcript.original" not in {o.kind for o in objects}


async def test_audio_whose_redaction_failed_is_served_to_nobody(
    gw: Gateway, worker: AnalysisWorker, transcriber: ScriptedTranscriber, clock: FakeClock
) -> None:
    transcriber.fail = 99
    tenant = await gw.tenant("acme", redacting(audio=True))
    recording_id = (await push(gw, tenant, sample_call("support")))["recording_id"]
    for attempt in range(3):
        assert await worker.run_once() is True
        clock.advance(AI_BACKOFF_S * 2**attempt)
    _, view = await get(gw, f"/v1/recordings/{recording_id}", tenant.admin)
    assert (view["status"], view["audio_purged"]) == ("failed", False)
    status, body = await get(gw, f"/v1/recordings/{recording_id}/audio", tenant.admin)
    assert (status, body["error"]) == (409, "audio_not_redacted")
    assert "its analysis failed" in body["message"]
    status, archive = await get(gw, "/v1/tenants/acme/export?number=%2B40711111111", tenant.admin)
    assert status == 200
    with zipfile.ZipFile(io.BytesIO(archive)) as exported:
        names = exported.namelist()
        (item,) = json.loads(exported.read("manifest.json"))["recordings"]
    assert not [name for name in names if name.endswith(".wav")]
    assert item["audio"] == "audio_not_redacted"
