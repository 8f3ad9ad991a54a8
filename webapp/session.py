"""One camera connection's state in one object, and what tracking a frame changed.

Everything the server keeps for a camera lives in its ``CameraSession``: name, tracker, live
statistics, frame counter and the alerts already raised; dropping the session drops it all.
"""

from __future__ import annotations

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
    pending: Pending | None = None  # its latest unprocessed frame (guarded by FrameSlots)
    received: int = 0  # frames received; every ``tile_every``-th gets the thorough detector pass
    closed: bool = False
    alerted: set[int] = field(default_factory=set)  # track ids already alerted

    def observe(self, result: FrameResult, now: float) -> Observation:
        """Track the faces of a processed frame (one worker at a time per session)."""
        faces = result.faces
        ids, left, confirmed = self.tracker.update([f.box for f in faces], [f.label for f in faces],
                                                   [f.score for f in faces], now, [f.unsure for f in faces])
        tracked = replace(result, faces=[replace(f, track=i) for f, i in zip(faces, ids)])
        return Observation(tracked, left, [self.tracker.person(t) for t in confirmed])

    def display_name(self, pending: Pending) -> str:
        return pending.camera or self.name
