"""Helpers of the AI tests: the shipped sample calls, WER, and a shared analyzer.

The sample calls (``tests/data/calls``, made by ``bench/make_test_calls.py`` with eSpeak NG)
carry their script: each track's text and talk time, so transcription and the talk/listen
metrics can be checked against what was said.
"""

from __future__ import annotations

import json
import re
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai.pipeline import Analyzer
from ai.worker import AnalysisWorker
from gateway.services import build_worker
from gateway.settings import Settings
from gateway.state import AI_METRICS, SERVICES
from storage.catalog import Job
from tests.gateway import FakeClock, Gateway, TenantTokens, bearer, stream_twilio

CALLS = Path(__file__).resolve().parent / "data" / "calls"
ALL_AI = {"transcript": True, "summary": True, "sentiment": True, "talk_listen": True,
          "topics": True}  # fmt: skip
AI_ONLY = {"recording": {"enabled": False}, "ai": ALL_AI}
"""Instructions of an AI-only call: analysed, then its audio purged."""
RECORDED = {"recording": {"enabled": True}, "ai": ALL_AI}
AI_BACKOFF_S = 10
"""The functional tier's ``ai.retry_backoff``."""
AI_LEASE_S = 60
"""The functional tier's ``ai.lease``."""


@dataclass(frozen=True)
class SampleCall:
    name: str
    inbound: bytes
    """Raw µ-law, 8 kHz, the whole timeline."""
    outbound: bytes
    script: dict[str, Any]

    @property
    def text(self) -> dict[str, str]:
        return dict(self.script["text"])

    @property
    def talk_s(self) -> dict[str, float]:
        return dict(self.script["talk_s"])


def sample_call(name: str) -> SampleCall:
    return SampleCall(
        name=name,
        inbound=(CALLS / f"{name}.inbound.ulaw").read_bytes(),
        outbound=(CALLS / f"{name}.outbound.ulaw").read_bytes(),
        script=json.loads((CALLS / f"{name}.json").read_text()),
    )


_NUMBERS = {
    "0": "zero", "1": "one", "2": "two", "3": "three", "4": "four",
    "5": "five", "6": "six", "7": "seven", "8": "eight", "9": "nine",
}  # fmt: skip


def words(text: str) -> list[str]:
    """Lower-case words without punctuation or diacritics; digits spelled out one by one
    (the scripts read account numbers as words, Whisper may write digits)."""
    folded = unicodedata.normalize("NFKD", text.lower())
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    folded = re.sub(r"\d", lambda m: f" {_NUMBERS[m.group()]} ", folded)
    return re.findall(r"[a-z]+(?:'[a-z]+)?", folded)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level Levenshtein distance / reference words."""
    ref, hyp = words(reference), words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / max(1, len(ref))


class ScriptedSpeech:
    """The ``ScriptedTranscriber``'s VAD: speech is where 20 ms frames (from sample 0) are
    loud, and loud stretches less than 0.3 s apart are one interval ("within a word"). Fed
    in pieces, it finds what one look at the whole track finds; it holds one frame."""

    FRAME = 320  # 20 ms at 16 kHz

    def __init__(self) -> None:
        import numpy as np

        self._partial = np.zeros(0, dtype=np.float32)
        self._index = 0
        self._start: int | None = None
        self._intervals: list[Any] = []

    def feed(self, samples: Any) -> None:
        import numpy as np

        audio = np.concatenate([self._partial, samples])
        whole = len(audio) - len(audio) % self.FRAME
        loud = np.abs(audio[:whole]).reshape(-1, self.FRAME).max(axis=1, initial=0.0) > 0.05
        for is_loud in loud.tolist():
            self._step(is_loud)
        self._partial = audio[whole:].copy()
        audio.fill(0.0)

    def finish(self) -> tuple[Any, ...]:
        import numpy as np

        if len(self._partial):
            self._step(float(np.abs(self._partial).max()) > 0.05)
        self._step(False)
        self.wipe()
        return tuple(self._intervals)

    def wipe(self) -> None:
        self._partial.fill(0.0)

    def _step(self, is_loud: bool) -> None:
        from ai.transcript import Interval

        index, self._index = self._index, self._index + 1
        if is_loud and self._start is None:
            self._start = index
        elif not is_loud and self._start is not None:
            start, self._start = self._start, None
            if self._intervals and start * 0.02 - self._intervals[-1].end < 0.3:  # a word
                self._intervals[-1] = Interval(self._intervals[-1].start, index * 0.02)
            else:
                self._intervals.append(Interval(start * 0.02, index * 0.02))


class ScriptedTranscriber:
    """A ``Transcriber`` test double: speech is where the track's samples are loud
    (``ScriptedSpeech``), and each loud stretch of what it is given to transcribe is
    "transcribed" as the words ``word0 word1 ...`` (one per 0.5 s), placed on the track's
    timeline through the chunks, so the worker's bookkeeping (and where windows cut) can
    be tested fast and exactly; ``fail`` makes the first ``fail`` calls of ``transcribe``
    raise. ``windows`` records each call's chunks. ``script``: texts the stretches are
    "transcribed" as instead, in order (tracks in the order the pipeline reads them,
    inbound first), until they run out."""

    model_name = "scripted"
    multilingual = False

    def __init__(self, *, fail: int = 0, script: Sequence[str] = ()) -> None:
        self.script = list(script)
        self.fail = fail
        self.calls = 0
        self.windows: list[tuple[tuple[int, int], ...]] = []

    def speech_detector(self) -> ScriptedSpeech:
        return ScriptedSpeech()

    def detect_language(self, voiced: Any) -> list[tuple[str, float]]:
        return [("en", 1.0)]

    def transcribe(self, voiced: Any, chunks: Any, language: str) -> tuple[Any, ...]:
        import numpy as np

        from ai.transcribe import Utterance

        self.calls += 1
        if self.calls <= self.fail:
            raise RuntimeError("scripted failure")
        self.windows.append(tuple(chunks))
        utterances = []
        at = 0
        for start, end in chunks:
            # Its frames on the track's grid (from sample 0), wherever the chunk starts.
            detector = ScriptedSpeech()
            grid = start - start % ScriptedSpeech.FRAME
            detector.feed(np.zeros(start - grid, dtype=np.float32))
            detector.feed(voiced[at : at + end - start])
            at += end - start
            for i in detector.finish():
                count = max(1, int(i.duration * 2))
                text = " ".join(f"word{n}" for n in range(count))
                if self.script:
                    text = self.script.pop(0)
                utterances.append(
                    Utterance(
                        round(grid / 16000 + i.start, 3), round(grid / 16000 + i.end, 3), text
                    )
                )
        return tuple(utterances)


def ulaw_source(track: str, ulaw: bytes, *, record_bytes: int = 16000) -> Any:
    """A ``TrackSource`` of 8 kHz µ-law ``ulaw`` (the whole timeline) held in memory, in
    records of ``record_bytes`` as the 2 s flushes make them."""
    from ai.audio import TrackSource
    from storage.media.codecs import codec
    from storage.media.tracks import TrackRecord

    async def records() -> Any:
        async def each() -> Any:
            for offset in range(0, len(ulaw), record_bytes):
                yield TrackRecord(offset, ulaw[offset : offset + record_bytes])

        return each()

    return TrackSource(track=track, codec=codec("pcmu"), rate=8000, frames=len(ulaw),
                       records=records)  # fmt: skip


def whisper(model: str = "tiny.en") -> Any:
    """The real transcriber on the packaged ``model``, as a worker loads it (CPU, int8)."""
    from ai.models import resolve_model
    from ai.transcribe import WhisperOptions, WhisperTranscriber

    resolved = resolve_model(model, cache_dir=Path(tempfile.gettempdir()) / "callvault-models")
    return WhisperTranscriber(resolved, WhisperOptions(device="cpu", compute_type="int8"))


# --- the AI worker in the functional tier -------------------------------------------------


class Killed(BaseException):
    """Raised where a test's worker "dies": nothing after that point of the attempt runs
    (a BaseException, so no ``except Exception`` of the worker catches it)."""


def new_worker(gw: Gateway, settings: Settings, clock: FakeClock, model: Any) -> AnalysisWorker:
    """An AI worker of the in-process gateway ``gw`` whose model is ``model`` (a
    ``ScriptedTranscriber``), on the test's clock."""
    return build_worker(
        settings,
        gw.app[SERVICES],
        now=clock.now,
        metrics=gw.app[AI_METRICS],
        analyzer=Analyzer(lambda: model),
    )


async def push(gw: Gateway, tenant: TenantTokens, call: SampleCall) -> dict[str, Any]:
    """Announce and stream a sample call to its end over Twilio; the announcement."""
    announced = await gw.announce(tenant)
    await stream_twilio(gw, tenant, announced["call_id"], call.inbound, call.outbound)
    return announced


async def get(gw: Gateway, path: str, token: str) -> tuple[int, Any]:
    """(status, JSON body or bytes) of a GET."""
    response = await gw.client.get(path, headers=bearer(token))
    if response.content_type == "application/json":
        return response.status, await response.json()
    return response.status, await response.read()


async def job_of(gw: Gateway, tenant: str, recording_id: str) -> Job:
    """The recording's one ``analyze`` job."""
    (job,) = await gw.app[SERVICES].catalog.jobs.list(
        tenant, recording_id=recording_id, kind="analyze"
    )
    return job


async def audit_details(gw: Gateway, tenant: str, action: str) -> list[dict[str, Any]]:
    """The details of the tenant's audit events of ``action``, in order."""
    events = await gw.app[SERVICES].catalog.audit.list(tenant, limit=1000)
    return [event.detail for event in events if event.action == action]
