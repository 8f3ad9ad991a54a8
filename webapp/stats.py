"""Live statistics: who is in view of each camera now, people today, camera health.

One ``LiveStats`` per server (people today) and one ``CameraStats`` per camera session, fed by
the inference workers and read by the dashboard. A ``version`` number changes with every
update so the broadcaster sends ``counts`` only when something changed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from webapp.redis_stats import RedisStats
from webapp.vision.labels import LABELS, WITH_MASK

# A camera that sent nothing for this long shows nobody in view (stopped, or the page hidden).
STALE_AFTER_S = 5.0


def _zeros() -> dict[str, int]:
    return {label: 0 for label in LABELS}


@dataclass
class CameraStats:
    id: str
    name: str
    connected_at: float = field(default_factory=time.time)
    last_seen: float | None = None
    frames: int = 0
    dropped: int = 0  # frames replaced by a newer one before the worker got to them
    fps: float = 0.0  # exponential moving average of processed frames per second
    latency_ms: float = 0.0  # server-side processing time (EMA)
    in_view: dict[str, int] = field(default_factory=_zeros)
    page_hidden: bool = False  # the camera page says it is behind another tab or window

    def record(self, name: str, labels: list[str], total_ms: float, now: float, ema: float = 0.2) -> None:
        """One processed frame with the labels of the (sure) faces in it. Written by the one
        worker that holds the camera's frame; read whole by the dashboard snapshot."""
        self.name = name
        if self.last_seen is not None:
            gap = max(now - self.last_seen, 1e-3)
            self.fps = 1.0 / gap if self.frames <= 1 else (1 - ema) * self.fps + ema / gap
        self.latency_ms = total_ms if self.frames == 0 else (1 - ema) * self.latency_ms + ema * total_ms
        self.last_seen = now
        self.frames += 1
        counts = _zeros()
        for label in labels:
            counts[label] += 1
        self.in_view = counts

    def snapshot(self, now: float) -> dict:
        stale = self.last_seen is None or now - self.last_seen > STALE_AFTER_S
        return {
            "id": self.id, "name": self.name,
            "fps": round(0.0 if stale else self.fps, 1),
            "latency_ms": round(self.latency_ms, 1),
            "frames": self.frames, "dropped": self.dropped,
            "last_seen": None if self.last_seen is None else _iso(self.last_seen),
            "in_view": _zeros() if stale else dict(self.in_view),
            "page_hidden": self.page_hidden,
        }


def _today() -> str:
    return datetime.now().date().isoformat()


def local_midnight() -> datetime:
    """Start of today in the server's time zone, as an aware datetime."""
    return datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


class LiveStats:
    """People counted today and the ``counts`` snapshot; the per-camera part lives in each
    camera's session (``CameraStats``). With ``shared`` (``--redis``) the snapshot is the whole
    building's: other servers' cameras and the people all servers counted. Thread-safe."""

    def __init__(self, server: str, people_today: dict[str, int] | None = None,
                 shared: RedisStats | None = None) -> None:
        self.server = server
        self.shared = shared
        self._lock = threading.Lock()
        self._people = {**_zeros(), **(people_today or {})}
        self._day = _today()
        self.version = 0

    def add_person(self, label: str) -> None:
        """One person (a finished track) seen today: counted here, or in Redis with ``shared``."""
        if self.shared is not None:
            self.shared.add_person(label)
        with self._lock:
            if self.shared is None:
                self._roll_day()
                self._people[label] += 1
            self.version += 1

    def touch(self) -> None:
        """Something a dashboard shows changed (a camera came, went or sent a frame)."""
        with self._lock:
            self.version += 1

    def _roll_day(self) -> None:
        if _today() != self._day:
            self._day = _today()
            self._people = _zeros()

    def snapshot(self, cameras: list[CameraStats], now: float) -> dict:
        """The dashboard's ``counts`` payload (also ``GET /api/stats``)."""
        views = [{**c.snapshot(now), "server": self.server} for c in cameras]
        if self.shared is not None:
            views += self.shared.remote_cameras()
        in_view = _zeros()
        for cam in views:
            for label, n in cam["in_view"].items():
                in_view[label] += n
        if self.shared is not None:
            people = {**_zeros(), **self.shared.people_today()}
        else:
            with self._lock:
                self._roll_day()
                people = dict(self._people)
        total = sum(people.values())
        return {
            "in_view": in_view,
            "people": people,  # today (server's local date), counted once per person
            "compliance": None if total == 0 else round(people[WITH_MASK] / total, 4),
            "cameras": sorted(views, key=lambda c: (c["name"], c["server"])),
            "ts": _iso(now),
        }
