"""One camera connection's state in one object, and what tracking a frame changed.

Everything the server keeps for a camera lives in its ``CameraSession``: name, tracker, live
statistics, frame counter and the alerts already raised; dropping the session drops it all.
Its waiting frame sits in ``FrameSlots`` under the session itself (latest frame wins).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace

from webapp.slots import Pending
from webapp.stats import CameraStats
from webapp.tracker import FaceTracker, Person
from webapp.vision.pipeline import FrameResult


@dataclass(frozen=True)
class Observation:
    """What one processed frame changed: the result with track ids, and the people it settled."""

    result: FrameResult
    left: list[Person]  # tracks that ended now: count them
    confirmed: list[Person]  # tracks that just became people: alert if unmasked


@dataclass(eq=False)
class CameraSession:
    """Everything the server keeps for one camera connection (one object, one place to drop)."""

    sid: str
    name: str
    tracker: FaceTracker
    stats: CameraStats
    last_thorough: float = -math.inf  # when a frame last got the detector's thorough pass
    closed: bool = False
    alerted: set[int] = field(default_factory=set)  # track ids already alerted
    # The worker tracking a frame and the socket thread closing the session take turns.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, result: FrameResult, now: float) -> Observation | None:
        """Track the faces of a processed frame; ``None`` if the camera has left meanwhile."""
        with self.lock:
            if self.closed:
                return None
            return self._track(result, now)

    def close(self) -> list[Person]:
        """The camera left: the people still in view, counted once."""
        with self.lock:
            self.closed = True
            return self.tracker.flush()

    def _track(self, result: FrameResult, now: float) -> Observation:
        faces = result.faces
        ids, left, confirmed = self.tracker.update([f.box for f in faces], [f.label for f in faces],
                                                   [f.score for f in faces], now, [f.unsure for f in faces])
        tracked = replace(result, faces=[replace(f, track=i) for f, i in zip(faces, ids)])
        return Observation(tracked, left, [self.tracker.person(t) for t in confirmed])

    def thorough_due(self, now: float, every_s: float) -> bool:
        """Whether the frame processed now gets the detector's thorough pass (noted if it does).
        A clock set back (the server's clock is the wall clock) makes it due at once."""
        if 0 <= now - self.last_thorough < every_s:
            return False
        self.last_thorough = now
        return True

    def display_name(self, pending: Pending) -> str:
        return pending.camera or self.name
