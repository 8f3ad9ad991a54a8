"""Live statistics: who is in view of each camera now, people today, camera health.

One ``LiveStats`` per server, fed by the inference workers and read by the dashboard. A
``version`` number changes with every update so the broadcaster sends ``counts`` only when
something changed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

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

    def snapshot(self, now: float) -> dict:
        stale = self.last_seen is None or now - self.last_seen > STALE_AFTER_S
        return {
            "id": self.id, "name": self.name,
            "fps": round(0.0 if stale else self.fps, 1),
            "latency_ms": round(self.latency_ms, 1),
            "frames": self.frames, "dropped": self.dropped,
            "last_seen": None if self.last_seen is None else _iso(self.last_seen),
            "in_view": _zeros() if stale else dict(self.in_view),
        }


def _today() -> str:
    return datetime.now().date().isoformat()


def local_midnight() -> datetime:
    """Start of today in the server's time zone, as an aware datetime."""
    return datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


class LiveStats:
    """Thread-safe per-camera state and the ``counts`` snapshot of the contract."""

    def __init__(self, ema: float = 0.2, people_today: dict[str, int] | None = None) -> None:
        self._lock = threading.Lock()
        self._cameras: dict[str, CameraStats] = {}
        self._ema = ema
        self._people = {**_zeros(), **(people_today or {})}
        self._day = _today()
        self.version = 0

    def add_person(self, label: str) -> None:
        """One person (a finished track) seen today."""
        with self._lock:
            self._roll_day()
            self._people[label] += 1
            self.version += 1

    def _roll_day(self) -> None:
        if _today() != self._day:
            self._day = _today()
            self._people = _zeros()

    def camera_connected(self, camera_id: str, name: str) -> None:
        with self._lock:
            self._cameras[camera_id] = CameraStats(camera_id, name)
            self.version += 1

    def camera_gone(self, camera_id: str) -> None:
        with self._lock:
            if self._cameras.pop(camera_id, None) is not None:
                self.version += 1

    def camera_name(self, camera_id: str) -> str:
        with self._lock:
            cam = self._cameras.get(camera_id)
            return cam.name if cam else camera_id

    def frame_dropped(self, camera_id: str) -> None:
        with self._lock:
            cam = self._cameras.get(camera_id)
            if cam:
                cam.dropped += 1

    def record(self, camera_id: str, name: str | None, labels: list[str], total_ms: float,
               now: float | None = None) -> None:
        """One processed frame of ``camera_id`` with the labels of the faces in it."""
        now = time.time() if now is None else now
        with self._lock:
            cam = self._cameras.get(camera_id)
            if cam is None:  # disconnected while its last frame was being processed
                return
            if name:
                cam.name = name
            if cam.last_seen is not None:
                gap = max(now - cam.last_seen, 1e-3)
                cam.fps = 1.0 / gap if cam.frames <= 1 else (1 - self._ema) * cam.fps + self._ema / gap
            cam.latency_ms = total_ms if cam.frames == 0 else (1 - self._ema) * cam.latency_ms + self._ema * total_ms
            cam.last_seen = now
            cam.frames += 1
            counts = _zeros()
            for label in labels:
                counts[label] += 1
            cam.in_view = counts
            self.version += 1

    def snapshot(self, now: float | None = None) -> dict:
        """The dashboard's ``counts`` payload (also ``GET /api/stats``)."""
        now = time.time() if now is None else now
        with self._lock:
            cameras = [c.snapshot(now) for c in self._cameras.values()]
        in_view = _zeros()
        for cam in cameras:
            for label, n in cam["in_view"].items():
                in_view[label] += n
        with self._lock:
            self._roll_day()
            people = dict(self._people)
        total = sum(people.values())
        return {
            "in_view": in_view,
            "people": people,  # today (server's local date), counted once per person
            "compliance": None if total == 0 else round(people[WITH_MASK] / total, 4),
            "cameras": sorted(cameras, key=lambda c: c["name"]),
            "ts": _iso(now),
        }
