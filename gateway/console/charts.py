"""The recording page's analysis, drawn: geometry for inline SVG, computed on the server.

Server-side, so the charts show without JavaScript and need no charting library; SVG
attributes, not inline styles, so the console's Content-Security-Policy (no inline styles or
scripts) holds. Pure functions of the analysis document (API.md), tested without a browser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SPEAKERS = {"inbound": "Caller", "outbound": "Agent"}
WIDTH, HEIGHT, PAD = 600.0, 160.0, 24.0


def speaker(track: str) -> str:
    return SPEAKERS.get(track, track)


@dataclass(frozen=True, slots=True)
class Line:
    """One speaker's sentiment over time: SVG polyline points, and what a reader hears."""

    track: str
    speaker: str
    points: str
    dots: tuple[tuple[float, float, float, str], ...]
    """``(x, y, start_s, label)`` of each segment, for a point and its tooltip."""


@dataclass(frozen=True, slots=True)
class Timeline:
    lines: tuple[Line, ...]
    duration_s: float
    width: float = WIDTH
    height: float = HEIGHT
    pad: float = PAD

    @property
    def zero_y(self) -> float:
        return self.height / 2

    @property
    def ticks(self) -> list[tuple[float, str]]:
        """Up to six time marks along the x axis: ``(x, "m:ss")``."""
        step = max(1, round(self.duration_s / 5))
        return [
            (_x(t, self.duration_s), f"{t // 60}:{t % 60:02d}")
            for t in range(0, int(self.duration_s) + 1, step)
        ]


def _x(seconds: float, duration_s: float) -> float:
    span = WIDTH - 2 * PAD
    return round(PAD + span * (seconds / duration_s if duration_s > 0 else 0), 1)


def _y(score: float) -> float:
    """Score +1 at the top, -1 at the bottom."""
    span = HEIGHT - 2 * PAD
    return round(PAD + span * (1 - (max(-1.0, min(1.0, score)) + 1) / 2), 1)


def sentiment_timeline(sentiment: Mapping[str, Any] | None) -> Timeline | None:
    """Each speaker's scored segments as a line over the call, or ``None`` without any."""
    segments: Sequence[Mapping[str, Any]] = (sentiment or {}).get("segments") or []
    if not segments:
        return None
    duration = max(float(s.get("end", 0) or 0) for s in segments) or 1.0
    lines = []
    for track in sorted({str(s.get("track")) for s in segments}):
        own = sorted((s for s in segments if s.get("track") == track), key=lambda s: s["start"])
        dots = tuple(
            (
                _x((float(s["start"]) + float(s["end"])) / 2, duration),
                _y(float(s["score"])),
                float(s["start"]),
                f"{speaker(track)} at {float(s['start']):.1f} s: {s.get('label')} "
                f"({float(s['score']):+.2f})",
            )
            for s in own
        )
        points = " ".join(f"{x},{y}" for x, y, _, _ in dots)
        lines.append(Line(track, speaker(track), points, dots))
    return Timeline(tuple(lines), duration)


@dataclass(frozen=True, slots=True)
class Bar:
    speaker: str
    track: str
    talk_s: float
    share: float
    width: float
    wpm: float | None
    longest_monologue_s: float | None


def talk_bars(talk_listen: Mapping[str, Any] | None, width: float = 400.0) -> list[Bar]:
    """One bar per speaker, its length its share of the talk time."""
    tracks: Mapping[str, Any] = (talk_listen or {}).get("tracks") or {}
    bars = []
    for track in sorted(tracks):
        data = tracks[track] or {}
        share = float(data.get("talk_share") or 0.0)
        bars.append(
            Bar(
                speaker=speaker(track),
                track=track,
                talk_s=float(data.get("talk_s") or 0.0),
                share=share,
                width=round(max(0.0, min(1.0, share)) * width, 1),
                wpm=data.get("wpm"),
                longest_monologue_s=data.get("longest_monologue_s"),
            )
        )
    return bars


def clock(seconds: float) -> str:
    """``m:ss`` of a time on the call (a transcript line's stamp)."""
    whole = int(max(0.0, seconds))
    return f"{whole // 60}:{whole % 60:02d}"
