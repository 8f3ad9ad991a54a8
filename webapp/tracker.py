"""Follow faces across the frames of one camera, so people are counted instead of detections.

Why our own small tracker: the maintained libraries did not fit this project's environment.
norfair 2.3 pins numpy < 2 (TensorFlow 2.21 and our serving stack use numpy 2), and
ByteTrack now lives in Roboflow's ``trackers`` / older ``supervision`` releases, which require
the GUI build ``opencv-python``; installed next to ``opencv-python-headless`` both overwrite
the same ``cv2`` package. Faces at an entrance are few and move slowly between frames, so
greedy matching on IoU of constant-velocity-predicted boxes (with a centre-distance fallback
for low frame rates), as in SORT without the Kalman filter, is enough - and is tested on
crossing, leaving and returning faces.

A person's label is a confidence-weighted vote over the *confident* frames of their track;
a track becomes a *person* only after ``min_frames`` detections (one bad frame is not a
person) of which at least one was confident, and is counted once, when it ends. A track whose
every frame is unsure (a head turned away, a blurred profile) is never a person: it changes no
count, no compliance and raises no alert.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from webapp.vision.boxes import iou_matrix
from webapp.vision.labels import LABELS

Box = tuple[float, float, float, float]


@dataclass
class Track:
    id: int
    box: np.ndarray  # x0, y0, x1, y1
    first_seen: float
    last_seen: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # px per second
    hits: int = 1
    votes: dict[str, float] = field(default_factory=lambda: {label: 0.0 for label in LABELS})
    confident: int = 0  # frames whose classification was sure enough to vote

    @property
    def label(self) -> str:
        return max(self.votes, key=self.votes.get)

    @property
    def is_person(self) -> bool:
        return self.confident > 0

    def vote(self, label: str, score: float, unsure: bool) -> None:
        if not unsure:
            self.votes[label] += score
            self.confident += 1

    def predict(self, now: float) -> np.ndarray:
        return self.box + self.velocity * min(max(now - self.last_seen, 0.0), 1.0)


@dataclass(frozen=True)
class Person:
    """A finished (or confirmed) track: one person with one label."""

    track: int
    label: str
    frames: int
    first_seen: float
    last_seen: float


class FaceTracker:
    """Tracks for one camera. Not thread-safe: each camera is processed by one worker at a time."""

    def __init__(self, min_frames: int = 3, max_gap_s: float = 1.0, iou_threshold: float = 0.2,
                 max_centre_jump: float = 1.5) -> None:
        self.min_frames = min_frames
        self.max_gap_s = max_gap_s
        self.iou_threshold = iou_threshold
        self.max_centre_jump = max_centre_jump  # in face widths, for low frame rates
        self.tracks: list[Track] = []
        self._ids = itertools.count(1)

    def update(self, boxes: Sequence[Box], labels: Sequence[str], scores: Sequence[float], now: float,
               unsure: Sequence[bool] | None = None) -> tuple[list[int], list[Person], list[Track]]:
        """Assign detections to tracks; ``unsure`` detections extend tracks but do not vote.

        Returns the track id of each detection, the people whose tracks ended now, and the
        tracks that just became confirmed people (for alerts).
        """
        unsure = [False] * len(boxes) if unsure is None else list(unsure)
        dets = np.array(boxes, np.float64).reshape(-1, 4)
        ids = [0] * len(dets)
        predicted = np.array([t.predict(now) for t in self.tracks]).reshape(-1, 4)
        pairs = self._match(predicted, dets)
        matched_tracks, matched_dets = set(), set()
        confirmed_now = []
        for ti, di in pairs:
            track = self.tracks[ti]
            dt = now - track.last_seen
            new_box = dets[di]
            if dt > 0:  # a clock set back says nothing about speed
                track.velocity = 0.5 * track.velocity + 0.5 * (new_box - track.box) / max(dt, 1e-3)
            track.box, track.last_seen = new_box, now
            was_person = self._confirmed(track)
            track.hits += 1
            track.vote(labels[di], float(scores[di]), unsure[di])
            if self._confirmed(track) and not was_person:
                confirmed_now.append(track)
            ids[di] = track.id
            matched_tracks.add(ti)
            matched_dets.add(di)
        for di in range(len(dets)):
            if di not in matched_dets:
                track = Track(next(self._ids), dets[di], now, now)
                track.vote(labels[di], float(scores[di]), unsure[di])
                self.tracks.append(track)
                ids[di] = track.id
                if self._confirmed(track):
                    confirmed_now.append(track)
        # A gap beyond max_gap_s either way ends a track: the wall clock may also be set back.
        ended = [t for t in self.tracks if abs(now - t.last_seen) > self.max_gap_s]
        self.tracks = [t for t in self.tracks if abs(now - t.last_seen) <= self.max_gap_s]
        return ids, [self.person(t) for t in ended if self._confirmed(t)], confirmed_now

    def flush(self) -> list[Person]:
        """End every track (camera gone): the people still in view are counted."""
        people = [self.person(t) for t in self.tracks if self._confirmed(t)]
        self.tracks = []
        return people

    def _confirmed(self, track: Track) -> bool:
        return track.hits >= self.min_frames and track.is_person

    @staticmethod
    def person(t: Track) -> Person:
        return Person(t.id, t.label, t.hits, t.first_seen, t.last_seen)

    def _match(self, predicted: np.ndarray, dets: np.ndarray) -> list[tuple[int, int]]:
        """Greedy matching, best similarity first: IoU, else a small score for a near centre."""
        if not len(predicted) or not len(dets):
            return []
        sim = iou_matrix(predicted, dets)
        pc = (predicted[:, :2] + predicted[:, 2:]) / 2
        dc = (dets[:, :2] + dets[:, 2:]) / 2
        width = np.maximum(predicted[:, 2] - predicted[:, 0], 1.0)[:, None]
        jump = np.linalg.norm(pc[:, None, :] - dc[None, :, :], axis=2) / width
        near = (sim < self.iou_threshold) & (jump < self.max_centre_jump)
        sim = np.where(sim >= self.iou_threshold, sim, np.where(near, 0.1 * (1 - jump / self.max_centre_jump), 0))
        pairs = []
        used_t, used_d = set(), set()
        for flat in np.argsort(-sim, axis=None):
            ti, di = divmod(int(flat), sim.shape[1])
            if sim[ti, di] <= 0:
                break
            if ti in used_t or di in used_d:
                continue
            pairs.append((ti, di))
            used_t.add(ti)
            used_d.add(di)
        return pairs
