"""Audio seconds transcribed per wall second: callvault's AI worker against bare faster-whisper,
on the same calls, the same model and the same settings, in the same run.

The AI pipeline wraps faster-whisper in a job queue, sealed storage and analysis features;
this program measures what that wrapping costs next to the least any faster-whisper
deployment spends on the same audio:

* **pipeline**: the real worker (``gateway.services.build_worker``) on a real local setup in
  a temporary data dir (``open_services``: SQLite catalog, file store, local keyring). Each
  sample call's two tracks are sealed as ingest seals them (records of µ-law with their
  offsets, 2 s per record, as the 2 s flushes make them) as audio objects of a finished
  recording of an AI-only call (every AI feature on, recording off), whose ``analyze`` job
  ``catalog.recordings.finish`` queues. Timed: ``worker.run_once()`` for that one job: claim,
  decrypt, decode, resample, VAD, transcribe, features, seal the results, purge the audio.
* **bare**: ``WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=1,
  num_workers=1).transcribe(audio, language=..., beam_size=5, vad_filter=True,
  word_timestamps=True)`` with its segments consumed, on the same 16 kHz float32 audio of
  each track (the µ-law decoded by ``storage.media`` and resampled by ``ai.audio``, once, up
  front), from the same model directory (``ai.models.resolve_model``).

Both load their model before any timing, and Silero VAD's ONNX session (shared by both: one
process) is created up front too; then each makes one untimed run of the first call, since a
process's first job pays one-time costs a long-lived worker pays once (``--no-warmup`` times
it, and the warm-up times are reported either way). Both run on one CPU thread
(CTranslate2's and ONNX Runtime's). Each run's pipeline recording is sealed afresh outside
the timed region (the purge shreds the audio). Languages: ``en`` for the English calls,
``ro`` for the Romanian one, which ``tiny.en`` (English only) skips. ``--device cuda`` runs
both on the GPU in float16 (Silero VAD stays on the CPU in both), and exits with a message
when CTranslate2 sees no CUDA device.

Per call, ``--repeats`` runs of each contestant alternate (the order flips every repeat);
a model's time is the sum over calls of each call's median run. Audio seconds count both
tracks (two streams per call). Reported per model: audio-s per wall-s of each, the ratio
pipeline/bare of that throughput (goal: >= 0.95) and each one's real-time factor (wall ÷
audio); per run, both times and both word error rates against the call's script
(``tests.ai.wer``), a check that the two did the same work. Prints markdown tables and one
JSON line.

    python bench/transcribe.py [--models tiny.en,base] [--calls support,cancellation,romanian]
                               [--repeats 3] [--device cpu|cuda]

``--long`` measures something else: the worker's peak memory on 5-minute, 1-hour and 4-hour
calls, windowed against the whole-track path (``bench/longcalls.py``, its options there):

    python bench/transcribe.py --long [--lengths 300,3600,14400] [--every 900]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import orjson  # noqa: E402
from arguments import positive  # noqa: E402
from longcalls import new_recording  # noqa: E402
from report import print_table  # noqa: E402

from ai.audio import resample  # noqa: E402
from ai.models import PACKAGED, resolve_model  # noqa: E402
from ai.transcript import TRACKS  # noqa: E402
from ai.worker import TRANSCRIPT_KIND, AnalysisWorker  # noqa: E402
from gateway.services import Services, build_worker, open_services  # noqa: E402
from gateway.settings import AiSettings, Settings  # noqa: E402
from storage.instructions import AI_FEATURES  # noqa: E402
from storage.media.codecs import codec  # noqa: E402
from storage.media.tracks import AUDIO_KIND, encode_record  # noqa: E402
from tests.ai import SampleCall, sample_call, wer, words  # noqa: E402

RATE = 8000
"""The sample calls' rate (8 kHz µ-law, as telephony delivers it)."""
RECORD_BYTES = 2 * RATE
"""Bytes of µ-law per record: ingest closes a run at every 2 s flush."""
CPU_THREADS = 1
BEAM_SIZE = 5
CALLS = ("support", "cancellation", "romanian")
CATEGORIES = {
    "cancellation": ["cancel", "terminate"],
    "billing": ["refund", "invoice"],
    "technical": ["router", "internet"],
}
"""Topic categories, so that the ``topics`` feature has phrases to match (as a tenant's)."""


@dataclass(frozen=True)
class Contestant:
    """How both contestants run the model on the chosen device."""

    device: Literal["cpu", "cuda"]
    compute_type: Literal["int8", "float16"]


@dataclass(frozen=True)
class BenchCall:
    """A sample call and what both contestants are given of it."""

    call: SampleCall
    language: str
    audio: dict[str, npt.NDArray[np.float32]]
    """Each track at 16 kHz, float32: the bare contestant's input."""

    @property
    def name(self) -> str:
        return self.call.name

    @property
    def frames(self) -> int:
        return len(self.call.inbound)

    @property
    def audio_s(self) -> float:
        """Both tracks' seconds: two streams of the call's length."""
        return len(TRACKS) * self.frames / RATE

    def ulaw(self, track: str) -> bytes:
        return self.call.inbound if track == "inbound" else self.call.outbound


def load_call(name: str) -> BenchCall:
    call = sample_call(name)
    pcmu = codec("pcmu")
    audio = {
        track: resample(pcmu.decode(call.inbound if track == "inbound" else call.outbound), RATE)
        for track in TRACKS
    }
    return BenchCall(call=call, language=str(call.script["language"]), audio=audio)


def call_wer(call: BenchCall, hypothesis: dict[str, str]) -> float:
    """Word error rate over both tracks: each track's errors against its own script,
    summed, over the script's words."""
    errors = 0.0
    reference_words = 0
    for track in TRACKS:
        reference = call.call.text[track]
        count = len(words(reference))
        errors += wer(reference, hypothesis.get(track, "")) * max(1, count)
        reference_words += count
    return errors / max(1, reference_words)


class Bare:
    """faster-whisper alone, as its README runs it, with the pipeline's settings."""

    def __init__(self, path: Path, contestant: Contestant) -> None:
        from faster_whisper import WhisperModel

        self.model = WhisperModel(
            str(path),
            device=contestant.device,
            compute_type=contestant.compute_type,
            cpu_threads=CPU_THREADS,
            num_workers=1,
        )

    def transcribe(self, call: BenchCall) -> dict[str, str]:
        """Each track's text; the segments are consumed (the transcription happens then)."""
        texts = {}
        for track in TRACKS:
            segments, _ = self.model.transcribe(
                call.audio[track],
                language=call.language,
                beam_size=BEAM_SIZE,
                vad_filter=True,
                word_timestamps=True,
            )
            texts[track] = " ".join(segment.text.strip() for segment in list(segments))
        return texts


class Pipeline:
    """The AI worker on a local setup: one tenant per language, every AI feature on,
    recording off (so the purge shreds the audio, as for an AI-only call)."""

    def __init__(self, services: Services, worker: AnalysisWorker) -> None:
        self.services = services
        self.worker = worker
        self.versions: dict[str, int] = {}
        self.runs = 0

    async def tenant(self, language: str) -> str:
        tenant = f"bench-{language}"
        if tenant not in self.versions:
            catalog = self.services.catalog
            now = datetime.now(UTC)
            await catalog.tenants.create(tenant, tenant, "eu", now)
            document = {
                "recording": {"enabled": False},
                "ai": {
                    **{feature: True for feature in AI_FEATURES},
                    "language": language,
                    "categories": CATEGORIES,
                },
            }
            instructions = await catalog.instructions.add(tenant, document, "bench", now)
            self.versions[tenant] = instructions.version
        return tenant

    async def seal(self, call: BenchCall) -> tuple[str, str]:
        """A finished recording of ``call`` with its analyze job queued; (tenant, id)."""
        tenant = await self.tenant(call.language)
        version = self.versions[tenant]
        catalog, vault = self.services.catalog, self.services.vault
        self.runs += 1
        call_id = f"{call.name}-{self.runs}"
        now = datetime.now(UTC)
        recording_id = await new_recording(
            catalog, tenant, version, call_id, store_recording=False, now=now
        )
        for track in TRACKS:
            upload = await vault.create_object(
                tenant=tenant,
                kind=AUDIO_KIND,
                data_class="recordings",
                now=now,
                recording_id=recording_id,
                track=track,
                spooled=True,
            )
            data = call.ulaw(track)
            for offset in range(0, len(data), RECORD_BYTES):
                await upload.write(encode_record(offset, data[offset : offset + RECORD_BYTES]))
                await upload.flush()
            await upload.commit(now=now)
        await catalog.recordings.finish(
            tenant,
            recording_id,
            samples=call.frames,
            now=now,
            job_id="job_" + secrets.token_hex(12),
        )
        return tenant, recording_id

    async def transcript(self, tenant: str, recording_id: str) -> dict[str, str]:
        """Each track's text from the sealed transcript; raises unless the job analyzed the
        recording and purged its audio (a failed attempt also returns from ``run_once``)."""
        catalog = self.services.catalog
        recording = await catalog.recordings.get(tenant, recording_id)
        if recording.status != "analyzed" or not recording.audio_purged:
            jobs = await catalog.jobs.list(tenant, recording_id=recording_id)
            errors = [job.last_error for job in jobs]
            raise RuntimeError(f"recording {recording_id} is {recording.status}: {errors}")
        objects = await catalog.objects.list(tenant, recording_id=recording_id)
        if any(o.kind == AUDIO_KIND and o.state != "deleted" for o in objects):
            raise RuntimeError(f"recording {recording_id}: its audio was not purged")
        (stored,) = [o for o in objects if o.kind == TRANSCRIPT_KIND and o.state == "committed"]
        document = orjson.loads(await self.services.vault.read_object(tenant, stored.id))
        return {
            track: " ".join(s["text"] for s in document["segments"] if s["track"] == track)
            for track in TRACKS
        }


def preload_vad() -> None:
    """Create Silero VAD's ONNX session now: both contestants share it (one process), and
    whichever ran first would otherwise pay for its creation inside its timing."""
    from faster_whisper.vad import get_vad_model

    get_vad_model()


async def bench_model(
    model: str,
    calls: list[BenchCall],
    repeats: int,
    contestant: Contestant,
    root: Path,
    *,
    warmup: bool,
) -> dict[str, Any]:
    settings = Settings(
        data_dir=root / model,
        ai=AiSettings(
            model=model,
            device=contestant.device,
            compute_type=contestant.compute_type,
            cpu_threads=CPU_THREADS,
            beam_size=BEAM_SIZE,
            workers=0,
        ),
    )
    async with open_services(settings) as services:
        worker = build_worker(settings, services, now=lambda: datetime.now(UTC))
        try:
            await worker.load()
            resolved = resolve_model(model, cache_dir=settings.model_cache_dir)
            bare = Bare(resolved.path, contestant)
            preload_vad()
            pipeline = Pipeline(services, worker)
            return await run_model(model, calls, repeats, pipeline, bare, warmup=warmup)
        finally:
            await worker.close()


async def run_pipeline(pipeline: Pipeline, call: BenchCall) -> tuple[float, dict[str, str]]:
    """One job of ``call``: sealed untimed, ``run_once`` timed; (seconds, texts)."""
    tenant, recording_id = await pipeline.seal(call)
    started = time.perf_counter()
    worked = await pipeline.worker.run_once()
    elapsed = time.perf_counter() - started
    if not worked:
        raise RuntimeError("the worker found no job to run")
    return elapsed, await pipeline.transcript(tenant, recording_id)


def run_bare(bare: Bare, call: BenchCall) -> tuple[float, dict[str, str]]:
    started = time.perf_counter()
    texts = bare.transcribe(call)
    return time.perf_counter() - started, texts


async def run_model(
    model: str,
    calls: list[BenchCall],
    repeats: int,
    pipeline: Pipeline,
    bare: Bare,
    *,
    warmup: bool,
) -> dict[str, Any]:
    warmups: dict[str, float] = {}
    if warmup:
        # A process's first job pays one-time costs (CTranslate2's first inference, the
        # catalog's statement caches, the features' tables) that a long-lived worker pays
        # once; the first call's first run of each is made and dropped.
        warmups["pipeline_s"] = round((await run_pipeline(pipeline, calls[0]))[0], 3)
        warmups["bare_s"] = round(run_bare(bare, calls[0])[0], 3)
    runs: list[dict[str, Any]] = []
    per_call: list[dict[str, Any]] = []
    for call in calls:
        times: dict[str, list[float]] = {"pipeline": [], "bare": []}
        for repeat in range(repeats):
            run: dict[str, Any] = {"model": model, "call": call.name, "repeat": repeat + 1}
            order = ("pipeline", "bare") if repeat % 2 == 0 else ("bare", "pipeline")
            for name in order:
                if name == "pipeline":
                    elapsed, texts = await run_pipeline(pipeline, call)
                else:
                    elapsed, texts = run_bare(bare, call)
                times[name].append(elapsed)
                run[f"{name}_s"] = round(elapsed, 3)
                run[f"{name}_wer"] = round(call_wer(call, texts), 3)
            runs.append(run)
        per_call.append(
            {
                "call": call.name,
                "language": call.language,
                "audio_s": call.audio_s,
                "pipeline_median_s": statistics.median(times["pipeline"]),
                "bare_median_s": statistics.median(times["bare"]),
            }
        )
    audio_s = sum(c["audio_s"] for c in per_call)
    pipeline_s = sum(c["pipeline_median_s"] for c in per_call)
    bare_s = sum(c["bare_median_s"] for c in per_call)
    return {
        "model": model,
        "calls": [c["call"] for c in per_call],
        "audio_s": round(audio_s, 3),
        "pipeline_s": round(pipeline_s, 3),
        "bare_s": round(bare_s, 3),
        "pipeline_audio_s_per_s": round(audio_s / pipeline_s, 2),
        "bare_audio_s_per_s": round(audio_s / bare_s, 2),
        "ratio": round(bare_s / pipeline_s, 3),
        "pipeline_rtf": round(pipeline_s / audio_s, 4),
        "bare_rtf": round(bare_s / audio_s, 4),
        "pipeline_wer": round(statistics.mean(r["pipeline_wer"] for r in runs), 3),
        "bare_wer": round(statistics.mean(r["bare_wer"] for r in runs), 3),
        "cpu_threads": {"pipeline": CPU_THREADS, "bare": CPU_THREADS},
        "warmup": warmups,
        "per_call": [
            {
                **c,
                "pipeline_median_s": round(c["pipeline_median_s"], 3),
                "bare_median_s": round(c["bare_median_s"], 3),
            }
            for c in per_call
        ],
        "runs": runs,
    }


def calls_for(model: str, calls: list[BenchCall]) -> list[BenchCall]:
    """An English-only model skips the calls in other languages."""
    if PACKAGED[model].multilingual:
        return calls
    return [call for call in calls if call.language == "en"]


def contestant_for(device: str) -> Contestant:
    """CPU: int8, as the worker runs by default. CUDA: float16, if a device is there."""
    if device == "cuda":
        from ai.transcribe import cuda_available

        if not cuda_available():
            sys.exit(
                "bench/transcribe.py: --device cuda, but CTranslate2 sees no CUDA device "
                "(ctranslate2.get_cuda_device_count() is 0); run it on a machine with a GPU, "
                "or without --device"
            )
        return Contestant(device="cuda", compute_type="float16")
    return Contestant(device="cpu", compute_type="int8")


def print_report(report: dict[str, Any]) -> None:
    head = ["model", "device", "CPU threads (pipeline / bare)", "calls", "audio s"]
    head += ["pipeline audio-s/s", "bare audio-s/s", "ratio pipeline/bare", "RTF pipeline"]
    head += ["RTF bare", "WER pipeline", "WER bare"]
    rows: list[list[object]] = []
    for m in report["models"]:
        threads = m["cpu_threads"]
        rows.append(
            [
                m["model"],
                f"{report['device']} ({report['compute_type']})",
                f"{threads['pipeline']} / {threads['bare']}",
                ", ".join(m["calls"]),
                m["audio_s"],
                m["pipeline_audio_s_per_s"],
                m["bare_audio_s_per_s"],
                f"**{m['ratio']}x**",
                m["pipeline_rtf"],
                m["bare_rtf"],
                m["pipeline_wer"],
                m["bare_wer"],
            ]
        )
    print()
    print_table(head, rows)
    for m in report["models"]:
        if m["warmup"]:
            w = m["warmup"]
            print(
                f"\n{m['model']}: the untimed first run of {m['calls'][0]}: pipeline "
                f"{w['pipeline_s']} s, bare {w['bare_s']} s"
            )
    print(
        "\nEvery run (s: wall time of the job / of both tracks' transcription; WER over both "
        "tracks against the script):\n"
    )
    head = ["model", "call", "repeat", "audio s", "pipeline s", "bare s", "time pipeline/bare"]
    head += ["WER pipeline", "WER bare"]
    rows = []
    for m in report["models"]:
        audio = {c["call"]: c["audio_s"] for c in m["per_call"]}
        for r in m["runs"]:
            rows.append(
                [
                    r["model"],
                    r["call"],
                    r["repeat"],
                    audio[r["call"]],
                    r["pipeline_s"],
                    r["bare_s"],
                    f"{r['pipeline_s'] / r['bare_s']:.3f}",
                    r["pipeline_wer"],
                    r["bare_wer"],
                ]
            )
    print_table(head, rows)


def names(text: str, known: tuple[str, ...] | list[str]) -> list[str]:
    """A comma-separated choice among ``known``, in the order given."""
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(known)}; not {text!r}")
    return chosen


def model_names(text: str) -> list[str]:
    return names(text, list(PACKAGED))


def call_names(text: str) -> list[str]:
    return names(text, CALLS)


async def run(
    models: list[str], calls: list[str], repeats: int, contestant: Contestant, *, warmup: bool
) -> dict[str, Any]:
    loaded = [load_call(name) for name in calls]
    results = []
    with tempfile.TemporaryDirectory(prefix="callvault-bench-") as root:
        for model in models:
            chosen = calls_for(model, loaded)
            if not chosen:
                print(f"# {model}: no call in a language it knows; skipped", file=sys.stderr)
                continue
            results.append(
                await bench_model(model, chosen, repeats, contestant, Path(root), warmup=warmup)
            )
    return {
        "bench": "transcribe",
        "device": contestant.device,
        "compute_type": contestant.compute_type,
        "repeats": repeats,
        "warmup": warmup,
        "models": results,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if "--long" in argv:
        # Peak memory on long calls, windowed against the whole-track path: its own program
        # (child processes, its own options); see bench/longcalls.py.
        import longcalls

        return longcalls.main([a for a in argv if a != "--long"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=model_names, default=["tiny.en", "base"])
    parser.add_argument("--calls", type=call_names, default=list(CALLS))
    parser.add_argument("--repeats", type=positive, default=3, help="runs of each, per call")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--long",
        action="store_true",
        help="instead: the worker's peak memory on long calls (bench/longcalls.py)",
    )
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="time the process's first run of each too (by default one is made and dropped)",
    )
    args = parser.parse_args(argv)
    contestant = contestant_for(args.device)
    started = time.perf_counter()
    report = asyncio.run(run(args.models, args.calls, args.repeats, contestant, warmup=args.warmup))
    import ctranslate2
    import faster_whisper

    print(
        f"# {args.repeats} repeat(s) per call, alternating (a model's time: the sum of each "
        "call's median run); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, faster-whisper {faster_whisper.__version__}, "
        f"CTranslate2 {ctranslate2.__version__}; {time.perf_counter() - started:.0f} s in all"
    )
    print_report(report)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
