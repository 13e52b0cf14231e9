"""Redaction measured: what it finds, whether the redacted audio still says it, what it costs.

Three parts, each a table (and one JSON line at the end):

* **detection**: recall and precision per entity type and language on the labelled
  utterances (``tests/data/redaction/utterances.json``, both forms: ``spoken``, as people
  say the values, and ``written``, as Whisper writes them when it hears well) and on the
  held-out set another author wrote (``heldout.json``); and the detector's time per
  utterance. Scoring: ``bench/redaction_score.py``.
* **audio** (``--parts audio``): each labelled utterance spoken by eSpeak NG, at 8 kHz
  µ-law, into the track its item names (the other track silent), through the real
  pipeline (``ai.pipeline.Analyzer`` with faster-whisper, the language forced to the
  item's): recall per type end to end (a label counts as found when a span of its type was
  found in its utterance: Whisper's errors included); then the found spans are masked out
  of the µ-law track exactly as the worker masks a stored one (``storage.media.masking``,
  silence, 250 ms padding) and the redacted audio is transcribed again, to count the
  values still heard in it: digits (any 4 of the value's in a row), e-mail local parts,
  names and street names. The same count on the unredacted transcript shows the check
  finds values where they are.
* **throughput** (``--parts throughput``): the AI worker (``build_worker``, local
  SQLite/file store/keyring in a temporary directory) on the sample calls
  (``tests/data/calls``) recorded with every AI feature on, with and without
  ``ai.redaction`` (transcript and audio, every type): audio seconds per wall second of
  each and their ratio (goal: >= 0.9). Runs alternate, the order flipping every repeat;
  each call's time is the median of its repeats.

    python bench/redaction.py [--parts detection,audio,throughput] [--limit 238]
                              [--model base] [--languages en,ro] [--repeats 3]
                              [--calls support,cancellation,romanian] [--verbose]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from arguments import positive  # noqa: E402
from longcalls import new_recording  # noqa: E402
from make_test_calls import speak  # noqa: E402
from redaction_score import (  # noqa: E402
    Tally,
    detect_text,
    load_heldout,
    load_utterances,
    score,
)
from report import print_table  # noqa: E402

from ai.models import resolve_model  # noqa: E402
from ai.pipeline import Analyzer  # noqa: E402
from ai.redaction.ner import EnglishPersons  # noqa: E402
from ai.redaction.redact import Redactor  # noqa: E402
from ai.redaction.spoken import digit_runs, lex, normalise  # noqa: E402
from ai.text import fold, words  # noqa: E402
from ai.transcribe import WhisperOptions, WhisperTranscriber  # noqa: E402
from ai.transcript import TRACKS  # noqa: E402
from gateway.services import build_worker, open_services  # noqa: E402
from gateway.settings import AiSettings, Settings  # noqa: E402
from storage.instructions import AI_FEATURES  # noqa: E402
from storage.media.codecs import codec  # noqa: E402
from storage.media.masking import Mask, TrackMasker  # noqa: E402
from storage.media.tracks import AUDIO_KIND, TrackRecord, encode_record  # noqa: E402
from storage.redactionrules import ENTITY_TYPES, RedactionRule  # noqa: E402
from tests.ai import sample_call, ulaw_source  # noqa: E402

RATE = 8000
RECORD_BYTES = 2 * RATE
"""µ-law bytes per record, as ingest's 2 s flushes make them."""
LEAD_S = 0.5
SPEED_WPM = 140
"""Words a minute: a caller reading a number out to an agent goes slowly."""
PADDING_MS = 250
VOICES = {"en": "en-us+klatt", "ro": "ro"}
"""eSpeak NG voices: of those tried (en-gb, en-us+m1, en+f3, en-gb-x-rp, the klatt ones; ro,
ro+m1, ro+f3, ro+klatt), the ones whose digits Whisper base heard best at 8 kHz."""
PARTS = ("detection", "audio", "throughput")
CALLS = ("support", "cancellation", "romanian")
DIGIT_TYPES = frozenset({"card_number", "phone_number", "iban", "ro_cnp"})
LEAK_DIGITS = 4
"""A value counts as heard again when this many of its digits in a row are."""


# --- detection ------------------------------------------------------------------------------


def detection(redactor: Redactor) -> dict[str, Any]:
    sets = {
        "spoken": (load_utterances(), "spoken"),
        "written": (load_utterances(), "written"),
        "held-out": (load_heldout(), "text"),
    }
    rows: list[list[str]] = []
    summary: dict[str, Any] = {}
    for name, (items, form) in sets.items():
        for language in ("en", "ro"):
            chosen = [item for item in items if item["language"] == language]
            tallies = score(chosen, redactor, form)
            summary[f"{name}/{language}"] = {
                entity: {"recall": round(t.recall, 3), "precision": round(t.precision, 3),
                         "labels": t.labels}
                for entity, t in tallies.items()
            }  # fmt: skip
            rows.append([name, language, *(_cell(tallies[entity]) for entity in ENTITY_TYPES)])
    print_table(["set", "lang", *ENTITY_TYPES], rows)
    items = load_utterances()
    started = time.perf_counter()
    for item in items:
        detect_text(redactor, item["spoken"], item["language"])
    per_utterance_ms = (time.perf_counter() - started) / len(items) * 1000
    print(f"\ndetection: {per_utterance_ms:.2f} ms per utterance ({len(items)} utterances)")
    return {"sets": summary, "ms_per_utterance": round(per_utterance_ms, 3)}


def _cell(tally: Tally) -> str:
    if not tally.labels and not tally.detected:
        return "-"
    return f"{tally.recall:.2f} / {tally.precision:.2f} ({tally.labels})"


# --- audio ----------------------------------------------------------------------------------


def _track(espeak: str, item: dict[str, Any]) -> tuple[bytes, bytes]:
    """(inbound, outbound) µ-law of the utterance in its track, the other one silent."""
    speech = speak(espeak, VOICES[item["language"]], item["spoken"], speed=SPEED_WPM)
    lead = np.zeros(int(LEAD_S * RATE), dtype=np.int16)
    samples = np.concatenate([lead, speech, lead])
    samples = np.concatenate([samples, np.zeros(-len(samples) % 160, dtype=np.int16)])
    said = codec("pcmu").encode(samples)
    silent = codec("pcmu").encode(np.zeros(len(samples), dtype=np.int16))
    return (said, silent) if item["track"] == "inbound" else (silent, said)


def _records(ulaw: bytes) -> list[TrackRecord]:
    return [
        TrackRecord(offset, ulaw[offset : offset + RECORD_BYTES])
        for offset in range(0, len(ulaw), RECORD_BYTES)
    ]


def _masked(ulaw: bytes, intervals: list[tuple[int, int]]) -> bytes:
    """The track with ``intervals`` silenced, the worker's way (record by record)."""
    masker = TrackMasker(codec("pcmu"), Mask.build(intervals, "silence", RATE))
    return b"".join(piece.payload for r in _records(ulaw) for piece in masker.mask(r))


def heard(value: str, entity: str, text: str) -> bool:
    """Whether ``text`` (a transcript) still says ``value``: any ``LEAK_DIGITS`` of its
    digits in a row, or (e-mail, name, address) one of its words of 3 letters or more."""
    if entity in DIGIT_TYPES:
        digits = "".join(c for c in value if c.isdigit())
        runs = [run.digits for run in digit_runs(normalise(lex(text.split())))]
        return any(
            digits[i : i + LEAK_DIGITS] in run for run in runs for i in range(len(digits) - 3)
        )
    said = set(words(text))
    local = value.split("@")[0] if entity == "email" else value
    pieces = [p for p in words(local.replace(".", " ")) if len(p) >= 3 and not p.isdigit()]
    street = [p for p in pieces if p not in {"strada", "bulevardul", "calea", "aleea"}]
    return any(fold(p) in said for p in (street if entity == "postal_address" else pieces))


async def audio(
    model: str, limit: int, *, languages: Sequence[str] = ("en", "ro"), verbose: bool = False
) -> dict[str, Any]:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("the audio part needs eSpeak NG (apt-get install espeak-ng)")
    resolved = resolve_model(model, cache_dir=Path(tempfile.gettempdir()) / "callvault-models")
    transcriber = WhisperTranscriber(resolved, WhisperOptions(device="cpu", compute_type="int8"))
    analyzer = Analyzer(lambda: transcriber)
    rule = RedactionRule(transcript=True, audio=True, keep_original=True)
    tallies = {(lang, entity): Tally() for lang in ("en", "ro") for entity in ENTITY_TYPES}
    leaks = {"values": 0, "heard_before": 0, "heard_after": 0}
    misses: list[str] = []
    examples: list[str] = []
    items = [item for item in load_utterances() if item["language"] in languages][:limit]
    audio_s = 0.0
    started = time.perf_counter()
    try:
        for item in items:
            inbound, outbound = _track(espeak, item)
            audio_s += len(inbound) / RATE
            tracks = [ulaw_source("inbound", inbound), ulaw_source("outbound", outbound)]
            analysis = await analyzer.analyse(
                tracks, features=("transcript",), language=item["language"], categories={},
                duration_s=len(inbound) / RATE, redaction=rule,
            )  # fmt: skip
            labels = item["labels"]["spoken"]
            found = [span.entity for span in analysis.redacted]
            for entity in ENTITY_TYPES:
                labelled = sum(1 for label in labels if label["type"] == entity)
                detected = found.count(entity)
                tally = tallies[item["language"], entity]
                tally.labels += labelled
                tally.found += min(labelled, detected)
                tally.detected += detected
                tally.right += min(labelled, detected)
            if labels and labels[0]["type"] not in found:
                said = " ".join(s.text for s in (analysis.original or analysis.transcript).segments)
                misses.append(f"{item['id']} {labels[0]['type']}: {said!r}")
            if not labels or labels[0]["type"] not in found:
                continue
            # The value was found: silence its spans and listen again.
            ulaw = inbound if item["track"] == "inbound" else outbound
            pad = PADDING_MS / 1000
            intervals = [
                (int(max(0.0, s.start - pad) * RATE), int((s.end + pad) * RATE) + 1)
                for s in analysis.redacted
                if s.track == item["track"]
            ]
            redacted = _masked(ulaw, intervals)
            silent = inbound if item["track"] == "outbound" else outbound
            again = await analyzer.analyse(
                [ulaw_source(item["track"], redacted),
                 ulaw_source("outbound" if item["track"] == "inbound" else "inbound", silent)],
                features=("transcript",), language=item["language"], categories={},
                duration_s=len(redacted) / RATE,
            )  # fmt: skip
            original = analysis.original or analysis.transcript
            before = " ".join(s.text for s in original.segments)
            after = " ".join(s.text for s in again.transcript.segments)
            leaks["values"] += 1
            leaks["heard_before"] += heard(item["value"], labels[0]["type"], before)
            if heard(item["value"], labels[0]["type"], after):
                leaks["heard_after"] += 1
                examples.append(f"{item['id']}: {after!r}")
    finally:
        await analyzer.close()
    elapsed = time.perf_counter() - started
    rows = [
        [entity, *(f"{tallies[lang, entity].recall:.2f} / {tallies[lang, entity].precision:.2f} "
                   f"({tallies[lang, entity].labels})" for lang in ("en", "ro"))]
        for entity in ENTITY_TYPES
    ]  # fmt: skip
    print_table(["type", "en: recall / precision (labels)", "ro"], rows)
    if verbose:
        for miss in misses:
            print("  missed:", miss)
    print(
        f"\nredacted values heard again: {leaks['heard_after']} of {leaks['values']} "
        f"(heard in the unredacted transcript: {leaks['heard_before']}); "
        f"{len(items)} utterances, {audio_s:.0f} s of audio, {elapsed:.0f} s, model {model}"
    )
    for example in examples:
        print("  heard again:", example)
    return {
        "model": model,
        "utterances": len(items),
        "languages": sorted({item["language"] for item in items}),
        "recall": {f"{lang}/{e}": round(t.recall, 3) for (lang, e), t in tallies.items()},
        "precision": {f"{lang}/{e}": round(t.precision, 3) for (lang, e), t in tallies.items()},
        **leaks,
    }


# --- throughput -----------------------------------------------------------------------------


async def throughput(
    model: str, repeats: int, calls: Sequence[str], *, warmup: bool = True
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="callvault-bench-redaction-"))
    settings = Settings(
        data_dir=root,
        ai=AiSettings(model=model, device="cpu", compute_type="int8", cpu_threads=1, workers=0),
    )
    times: dict[str, dict[str, list[float]]] = {"plain": {}, "redacting": {}}
    audio_s = 0.0
    try:
        async with open_services(settings) as services:
            worker = build_worker(settings, services, now=lambda: datetime.now(UTC))
            await worker.load()
            catalog, vault = services.catalog, services.vault
            now = datetime.now(UTC)
            versions = {}
            for mode in times:
                for language in ("en", "ro"):
                    tenant = f"bench-{mode}-{language}"
                    await catalog.tenants.create(tenant, tenant, "eu", now)
                    ai: dict[str, Any] = {f: True for f in AI_FEATURES}
                    ai["language"] = language
                    if mode == "redacting":
                        ai["redaction"] = {"transcript": True, "audio": True}
                    document = {"recording": {"enabled": True}, "ai": ai}
                    version = (
                        await catalog.instructions.add(tenant, document, "bench", now)
                    ).version
                    versions[tenant] = version

            async def run(mode: str, name: str) -> float:
                call = sample_call(name)
                language = str(call.script["language"])
                tenant = f"bench-{mode}-{language}"
                stamp = datetime.now(UTC)
                recording_id = await new_recording(
                    catalog, tenant, versions[tenant], f"{name}-{secrets.token_hex(4)}",
                    store_recording=True, now=stamp,
                )  # fmt: skip
                for track in TRACKS:
                    upload = await vault.create_object(
                        tenant=tenant, kind=AUDIO_KIND, data_class="recordings", now=stamp,
                        recording_id=recording_id, track=track,
                    )  # fmt: skip
                    data = call.inbound if track == "inbound" else call.outbound
                    for offset in range(0, len(data), RECORD_BYTES):
                        await upload.write(
                            encode_record(offset, data[offset : offset + RECORD_BYTES])
                        )
                    await upload.commit(now=stamp)
                await catalog.recordings.finish(
                    tenant, recording_id, samples=len(call.inbound), now=stamp,
                    job_id="job_" + secrets.token_hex(12),
                )  # fmt: skip
                started = time.perf_counter()
                if not await worker.run_once():
                    raise RuntimeError("no job ran")
                elapsed = time.perf_counter() - started
                recording = await catalog.recordings.get(tenant, recording_id)
                if recording.status != "analyzed":
                    raise RuntimeError(f"{name} ({mode}): {recording.status}")
                return elapsed

            for mode in times if warmup else ():  # untimed: spaCy's model loads on first use
                await run(mode, calls[0])
            for repeat in range(repeats):
                for name in calls:
                    order = list(times) if repeat % 2 == 0 else list(reversed(times))
                    for mode in order:
                        times[mode].setdefault(name, []).append(await run(mode, name))
            for name in calls:
                audio_s += len(TRACKS) * len(sample_call(name).inbound) / RATE
            await worker.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    totals = {mode: sum(statistics.median(v) for v in per.values()) for mode, per in times.items()}
    rate = {mode: audio_s / total for mode, total in totals.items()}
    ratio = rate["redacting"] / rate["plain"]
    rows = [[mode, f"{totals[mode]:.2f}", f"{rate[mode]:.1f}"] for mode in times]
    print_table(["worker", "wall s (sum of medians)", "audio s per wall s"], rows)
    print(f"\nthroughput with redaction / without: {ratio:.3f} (goal >= 0.9), model {model}")
    return {
        "model": model,
        "repeats": repeats,
        "calls": list(calls),
        "audio_s": audio_s,
        "audio_s_per_s": {m: round(r, 2) for m, r in rate.items()},
        "ratio": round(ratio, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="detection", help=f"comma-separated of {PARTS}")
    parser.add_argument("--limit", type=positive, default=1000, help="utterances (audio part)")
    parser.add_argument("--model", default="base")
    parser.add_argument("--languages", default="en,ro", help="utterances' languages (audio)")
    parser.add_argument("--repeats", type=positive, default=3)
    parser.add_argument("--calls", default=",".join(CALLS), help="sample calls (throughput)")
    parser.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="time the first runs too"
    )
    parser.add_argument("--verbose", action="store_true", help="print what the audio part missed")
    args = parser.parse_args(argv)
    parts = [part for part in args.parts.split(",") if part]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts: {sorted(unknown)}")
    report: dict[str, Any] = {"bench": "redaction", "machine": platform.machine(),
                              "cores": _cores()}  # fmt: skip
    if "detection" in parts:
        report["detection"] = detection(Redactor(lambda: EnglishPersons().find))
    if "audio" in parts:
        languages = [language for language in args.languages.split(",") if language]
        report["audio"] = asyncio.run(
            audio(args.model, args.limit, languages=languages, verbose=args.verbose)
        )
    if "throughput" in parts:
        calls = [name for name in args.calls.split(",") if name]
        report["throughput"] = asyncio.run(
            throughput(args.model, args.repeats, calls, warmup=args.warmup)
        )
    print(json.dumps(report))
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    raise SystemExit(main())
