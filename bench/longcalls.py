"""Peak memory of the AI worker on long calls: windowed transcription against the whole-track
run (``bench/transcribe.py --long``).

A long call is built the way a real one is stored: a finished recording (recording on, so
its audio outlives the job, and every AI feature) whose two tracks are sealed through the
vault in 2 s records of 8 kHz µ-law with a flush after each (as ingest's 2 s flushes make
them), silence included (a phone call sends packets while nobody talks). It is mostly
silence: the shipped ``support`` sample call (32.98 s, both tracks) is placed at 60 s and
then every ``--every`` seconds. Then a **fresh child process** (this file run with
``--child``) opens the same data dir, loads the model, claims the one queued job and runs
it (``worker.run_once()``: decrypt, decode, VAD, transcribe, features, seal), and reports
its peak resident memory (``ru_maxrss``, and ``VmHWM`` from ``/proc/self/status``), its
resident memory after loading the model (before the job) and the job's wall time. Each
call is sealed afresh for each run.

Contestants, one after another per length, each in its own child process:

* **windowed**: the AI worker as ``serve`` builds it (``build_worker``: ``ai.pipeline``,
  windows of ``ai.pipeline.WINDOW`` = 320 s), one ``run_once()``;
* **whole-track**: the path the AI worker took before windows (issue 15), step by step with
  the same library calls: each track's records rendered whole (``mono_pcm``), joined,
  resampled at once, both tracks held; ``get_speech_timestamps`` on each whole track;
  every chunk of a track's speech concatenated and given to faster-whisper in one
  ``transcribe`` (word timestamps, beam 5, segments consumed). It leaves out what costs
  no memory worth counting (the catalog steps, features, sealing the results).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import print_table  # noqa: E402

from ai.transcript import TRACKS  # noqa: E402
from gateway.settings import AiSettings, Settings  # noqa: E402
from storage.instructions import AI_FEATURES  # noqa: E402
from storage.media.tracks import AUDIO_KIND, encode_record  # noqa: E402
from tests.ai import sample_call  # noqa: E402

if TYPE_CHECKING:
    from storage.catalog import Catalog

RATE = 8000
RECORD_BYTES = 2 * RATE
"""2 s of µ-law per record, flushed after each: ingest's flush interval."""
SILENCE = b"\xff"
"""µ-law's zero."""
LENGTHS_S = (300, 3600, 14400)
MODES = ("windowed", "whole-track")
TENANT = "bench-long"


def settings(root: Path, model: str) -> Settings:
    return Settings(
        data_dir=root, ai=AiSettings(model=model, device="cpu", compute_type="int8", workers=0)
    )


def call_bytes(length_s: int, every_s: int) -> dict[str, bytearray]:
    """Each track of the long call: silence, with the sample call at 60 s and every
    ``every_s`` after."""
    call = sample_call("support")
    tracks = {track: bytearray(SILENCE * (length_s * RATE)) for track in TRACKS}
    for start in range(60 * RATE, length_s * RATE, every_s * RATE):
        for track in TRACKS:
            audio = call.inbound if track == "inbound" else call.outbound
            end = min(start + len(audio), length_s * RATE)
            tracks[track][start:end] = audio[: end - start]
    return tracks


async def new_recording(
    catalog: Catalog,
    tenant: str,
    version: int,
    call_id: str,
    *,
    store_recording: bool,
    now: datetime,
) -> str:
    """An accepted inbound PCMU call with AI on every feature, and its recording; the
    recording's id (the benchmarks' calls: this one's and ``bench/transcribe.py``'s)."""
    recording_id = "rec_" + secrets.token_hex(12)
    await catalog.calls.create(
        id=call_id,
        tenant_id=tenant,
        from_number="+40211111111",
        to_number="+40722222222",
        direction="inbound",
        consent="granted",
        transport="twilio",
        codec="pcmu",
        sample_rate=RATE,
        instructions_version=version,
        decision={"store_recording": store_recording, "ai": list(AI_FEATURES)},
        refusal_code=None,
        started_at=now,
    )
    await catalog.recordings.create(
        id=recording_id, tenant_id=tenant, call_id=call_id, instructions_version=version,
        now=now,
    )  # fmt: skip
    return recording_id


async def seal(root: Path, model: str, length_s: int, every_s: int) -> str:
    """A finished, recorded call of ``length_s`` with its analyze job queued; its id."""
    from gateway.services import open_services

    async with open_services(settings(root, model)) as services:
        catalog, vault = services.catalog, services.vault
        now = datetime.now(UTC)
        document = {
            "recording": {"enabled": True},
            "ai": {**{feature: True for feature in AI_FEATURES}, "language": "en"},
        }
        if not await catalog.tenants.list():
            await catalog.tenants.create(TENANT, TENANT, "eu", now)
            await catalog.instructions.add(TENANT, document, "bench", now)
        latest = await catalog.instructions.latest(TENANT)
        assert latest is not None
        version = latest.version
        call_id = f"long-{secrets.token_hex(6)}"
        recording_id = await new_recording(
            catalog, TENANT, version, call_id, store_recording=True, now=now
        )
        for track, data in call_bytes(length_s, every_s).items():
            upload = await vault.create_object(
                tenant=TENANT, kind=AUDIO_KIND, data_class="recordings", now=now,
                recording_id=recording_id, track=track, spooled=True,
            )  # fmt: skip
            for offset in range(0, len(data), RECORD_BYTES):
                await upload.write(encode_record(offset, data[offset : offset + RECORD_BYTES]))
                await upload.flush()
            await upload.commit(now=now)
        await catalog.recordings.finish(
            TENANT, recording_id, samples=length_s * RATE, now=now,
            job_id="job_" + secrets.token_hex(12),
        )  # fmt: skip
        return recording_id


def peak_kib() -> dict[str, int]:
    """This process's peak resident memory so far, two ways (KiB)."""
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "vm_hwm_kib": int(fields["VmHWM"].split()[0]),
        "vm_rss_kib": int(fields["VmRSS"].split()[0]),
    }


async def windowed(root: Path, model: str, recording_id: str) -> dict[str, Any]:
    """The worker's side: load the model, run the one queued job, report memory."""
    from gateway.services import build_worker, open_services

    config = settings(root, model)
    async with open_services(config) as services:
        worker = build_worker(config, services, now=lambda: datetime.now(UTC))
        try:
            await worker.load()
            from faster_whisper.vad import get_vad_model

            get_vad_model()
            loaded = peak_kib()
            started = time.perf_counter()
            if not await worker.run_once():
                raise RuntimeError("no job was queued")
            elapsed = time.perf_counter() - started
        finally:
            await worker.close()
        recording = await services.catalog.recordings.get(TENANT, recording_id)
        if recording.status != "analyzed":
            jobs = await services.catalog.jobs.list(TENANT, recording_id=recording_id)
            raise RuntimeError(f"{recording_id} is {recording.status}: {jobs[0].last_error}")
        objects = await services.catalog.objects.list(TENANT, recording_id=recording_id)
        (stored,) = [o for o in objects if o.kind == "transcript" and o.state == "committed"]
        transcript = json.loads(await services.vault.read_object(TENANT, stored.id))
    return {
        "loaded_rss_kib": loaded["vm_rss_kib"],
        **peak_kib(),
        "job_s": round(elapsed, 1),
        "segments": len(transcript["segments"]),
        "words": sum(len(s["text"].split()) for s in transcript["segments"]),
    }


async def whole_track(root: Path, model: str, recording_id: str) -> dict[str, Any]:
    """The baseline's side: the whole-track path (module docstring) on the one call."""
    import numpy as np
    from faster_whisper.vad import get_speech_timestamps, get_vad_model

    from ai.audio import resample
    from ai.transcribe import TIGHT_MIN_SILENCE_MS, whisper_chunks
    from ai.transcript import Interval
    from gateway.services import build_analyzer, open_services
    from storage.media.codecs import codec
    from storage.media.timeline import mono_pcm
    from storage.media.tracks import track_records

    config = settings(root, model)
    async with open_services(config) as services:
        transcriber: Any = build_analyzer(config)._load()
        get_vad_model()
        loaded = peak_kib()
        started = time.perf_counter()
        # The job is taken as a worker takes it (so that the next run finds only its own).
        job = await services.catalog.jobs.claim(
            "bench", datetime.now(UTC), timedelta(hours=6), kinds=["analyze"]
        )
        if job is None or job.recording_id != recording_id:
            raise RuntimeError(f"the job of {recording_id} was not the one queued")
        objects = await services.catalog.objects.list(TENANT, recording_id=recording_id)
        recording = await services.catalog.recordings.get(TENANT, recording_id)
        tracks = {}
        for track in TRACKS:
            streams = [
                await services.vault.open_object(TENANT, o.id)
                for o in objects
                if o.kind == AUDIO_KIND and o.track == track
            ]
            blocks = [
                block
                async for block in mono_pcm(
                    track_records(streams), codec=codec("pcmu"), frames=recording.samples or 0
                )
            ]
            tracks[track] = resample(np.concatenate(blocks), RATE)
        segments = 0
        words = 0
        for audio in tracks.values():
            tight = get_speech_timestamps(
                audio, min_silence_duration_ms=TIGHT_MIN_SILENCE_MS, speech_pad_ms=0
            )
            speech = tuple(Interval(c["start"] / 16000, c["end"] / 16000) for c in tight)
            chunks = whisper_chunks(speech, len(audio))
            voiced = np.concatenate([audio[c["start"] : c["end"]] for c in chunks])
            found, _ = transcriber._model.transcribe(
                voiced, language="en", beam_size=5, vad_filter=False, word_timestamps=True
            )
            for segment in found:
                segments += 1
                words += len(segment.text.split())
        elapsed = time.perf_counter() - started
        await services.catalog.jobs.complete(job.id, "bench", datetime.now(UTC))
    return {
        "loaded_rss_kib": loaded["vm_rss_kib"],
        **peak_kib(),
        "job_s": round(elapsed, 1),
        "segments": segments,
        "words": words,
    }


def run_child(root: Path, model: str, recording_id: str, mode: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, str(root), model, recording_id]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run(lengths: list[int], modes: list[str], model: str, every_s: int) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="callvault-long-") as directory:
        root = Path(directory)
        for length_s in lengths:
            for mode in modes:
                recording_id = asyncio.run(seal(root, model, length_s, every_s))
                result = run_child(root, model, recording_id, mode)
                rows.append({"length_s": length_s, "mode": mode, **result})
                print(f"# {length_s} s {mode}: {result}", file=sys.stderr, flush=True)
    return {"bench": "transcribe-long", "model": model, "every_s": every_s, "runs": rows}


def print_report(report: dict[str, Any]) -> None:
    head = ["track length", "mode", "peak RSS (MiB)", "RSS after model load (MiB)"]
    head += ["job growth (MiB)", "job s", "words"]
    rows = []
    for r in report["runs"]:
        length = r["length_s"]
        label = f"{length // 3600} h" if length >= 3600 else f"{length // 60} min"
        peak = max(r["ru_maxrss_kib"], r["vm_hwm_kib"]) / 1024
        loaded = r["loaded_rss_kib"] / 1024
        rows.append(
            [label, r["mode"], f"{peak:.0f}", f"{loaded:.0f}", f"{peak - loaded:.0f}",
             r["job_s"], r["words"]]
        )  # fmt: skip
    print()
    print_table(head, rows)


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="transcribe.py --long", description=__doc__)
    parser.add_argument("--lengths", default=",".join(str(s) for s in LENGTHS_S),
                        help="call lengths in seconds, comma-separated")  # fmt: skip
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--every", type=int, default=900, help="seconds between speech")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    lengths = [int(part) for part in args.lengths.split(",")]
    started = time.perf_counter()
    report = run(lengths, modes, args.model, args.every)
    print(
        f"# {args.model}, speech every {args.every} s; {os.cpu_count()} CPUs; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    print_report(report)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        mode, root, model, recording_id = sys.argv[2:]
        contestant = windowed if mode == "windowed" else whole_track
        outcome = asyncio.run(contestant(Path(root), model, recording_id))
        print(json.dumps(outcome))
    else:
        main(sys.argv[1:])
