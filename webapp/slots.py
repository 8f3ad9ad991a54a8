"""Latest-frame-wins slots: at most one waiting frame per connection, never a growing queue.

A camera that sends faster than the server can process would otherwise build a backlog and
watch its boxes lag seconds behind. Here a new frame replaces the waiting one (the replaced
frame is reported as dropped), and a connection is handed to at most one worker at a time.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass
class Pending:
    seq: int
    image: bytes
    camera: str | None


class FrameSlots:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._latest: dict[str, Pending] = {}
        self._ready: deque[str] = deque()
        self._busy: set[str] = set()
        self._closed = False

    def put(self, key: str, pending: Pending) -> Pending | None:
        """Store ``pending`` as the newest frame of ``key``; returns the frame it replaced."""
        with self._cond:
            replaced = self._latest.get(key)
            self._latest[key] = pending
            if key not in self._busy and key not in self._ready:
                self._ready.append(key)
                self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> tuple[str, Pending] | None:
        """The next connection with a waiting frame (oldest-waiting first); ``None`` on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready or self._closed, timeout):
                return None
            if self._closed:
                return None
            key = self._ready.popleft()
            self._busy.add(key)
            return key, self._latest.pop(key)

    def done(self, key: str) -> None:
        """The worker finished ``key``'s frame; a newer waiting frame becomes ready."""
        with self._cond:
            self._busy.discard(key)
            if key in self._latest and key not in self._ready:
                self._ready.append(key)
                self._cond.notify()

    def discard(self, key: str) -> None:
        """Forget a connection (it went away)."""
        with self._cond:
            self._latest.pop(key, None)
            try:
                self._ready.remove(key)
            except ValueError:
                pass

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def waiting(self) -> dict[str, Any]:
        with self._cond:
            return {"waiting": len(self._latest), "busy": len(self._busy)}
