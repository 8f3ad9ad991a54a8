"""Socket.IO handlers and the inference workers behind them.

Camera pages connect to the default namespace and send ``frame`` events; each frame is
checked in the handler (cheap: types, size, magic bytes), parked in a latest-frame-wins slot
and processed by an inference worker - never on the socket's own thread - which answers with
``detections`` (or ``frame_error``). Dashboards connect to ``/dashboard`` and receive
``counts`` on connect and at most every ``counts_interval`` seconds while anything changes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

from flask import request
from flask_socketio import ConnectionRefusedError, Namespace, SocketIO

from webapp.config import Settings
from webapp.history import History
from webapp.security import token_ok
from webapp.slots import FrameSlots, Pending
from webapp.stats import LiveStats, local_midnight
from webapp.tracker import FaceTracker
from webapp.vision.labels import WITH_MASK
from webapp.vision.pipeline import FRAME_FORMATS, FrameError, NotAnImage, Pipeline, TooLarge, sniff_format

log = logging.getLogger(__name__)

MAX_CAMERA_NAME = 60


class PayloadError(FrameError):
    code = "bad_payload"


def parse_frame(data: Any, max_bytes: int) -> tuple[int, bytes, str | None]:
    """(seq, image bytes, camera name) of a ``frame`` event, or a typed error."""
    if not isinstance(data, dict):
        raise PayloadError("a frame is an object {seq, image, camera?}")
    seq = data.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise PayloadError("'seq' must be an integer")
    image = data.get("image")
    if not isinstance(image, (bytes, bytearray, memoryview)):
        raise PayloadError("'image' must be binary JPEG or PNG data (send an ArrayBuffer or Blob)")
    image = bytes(image)
    if len(image) > max_bytes:
        raise TooLarge(f"frame is {len(image) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB - "
                       "send a smaller resolution or a lower JPEG quality")
    if sniff_format(image) not in FRAME_FORMATS:
        raise NotAnImage("'image' is not JPEG or PNG data")
    camera = data.get("camera")
    if camera is not None and not isinstance(camera, str):
        raise PayloadError("'camera' must be a string")
    camera = (camera or "").strip()[:MAX_CAMERA_NAME] or None
    return seq, image, camera


def error_payload(seq: int | None, code: str, message: str) -> dict:
    return {"seq": seq, "code": code, "message": message}


class InferenceService:
    """Frame slots, the inference workers and the dashboard broadcaster of one server."""

    def __init__(self, socketio: SocketIO, settings: Settings,
                 make_pipeline: Callable[[int], Pipeline], history: History) -> None:
        self.socketio = socketio
        self.settings = settings
        self.make_pipeline = make_pipeline
        self.history = history
        self.slots = FrameSlots()
        self.stats = LiveStats(people_today=dict(history.totals("people", local_midnight())))
        self.started = time.time()
        self._frame_numbers: dict[str, int] = {}
        self._trackers: dict[str, FaceTracker] = {}
        self._connections_lock = threading.Lock()
        self._running = False

    def start(self) -> None:
        """Start the workers and the broadcaster (idempotent)."""
        if self._running:
            return
        self._running = True
        n = self.settings.workers or os.cpu_count() or 1
        pipelines = [self.make_pipeline(n) for _ in range(n)]  # load models now: fail fast
        for pipeline in pipelines:
            self.socketio.start_background_task(self._work, pipeline)
        self.socketio.start_background_task(self._broadcast)
        self.socketio.start_background_task(self._persist)
        log.info("inference: %d worker(s), async mode %s", n, self.settings.async_mode)

    def stop(self) -> None:
        self._running = False
        self.slots.close()
        self.history.flush()

    # -- frames ---------------------------------------------------------------------------

    def submit(self, sid: str, data: Any) -> dict | None:
        """Validate and park a frame; returns a ``frame_error`` payload if it was refused."""
        seq = data.get("seq") if isinstance(data, dict) and isinstance(data.get("seq"), int) else None
        try:
            seq, image, camera = parse_frame(data, self.settings.max_frame_bytes)
        except FrameError as exc:
            return error_payload(seq, exc.code, exc.message)
        with self._connections_lock:
            number = self._frame_numbers.get(sid, 0)
            self._frame_numbers[sid] = number + 1
        replaced = self.slots.put(sid, Pending(seq, image, camera, time.time(), number))
        if replaced is not None:
            self.stats.frame_dropped(sid)
        return None

    def forget(self, sid: str) -> None:
        self.slots.discard(sid)
        with self._connections_lock:
            self._frame_numbers.pop(sid, None)
            tracker = self._trackers.pop(sid, None)
            people = tracker.flush() if tracker else []
        name = self.stats.camera_name(sid)
        for person in people:  # whoever was still in view when the camera went away
            self._count_person(name, person.label)
        self.stats.camera_gone(sid)

    def _count_person(self, camera: str, label: str) -> None:
        self.stats.add_person(label)
        self.history.add("people", camera, label)

    def _track(self, sid: str, camera: str, result, now: float) -> list[int | None]:
        """Track ids for the faces of a result; counts people who left, raises alerts."""
        with self._connections_lock:
            if sid not in self._frame_numbers:  # the camera left while its frame was processed
                return [None] * len(result.faces)
            tracker = self._trackers.get(sid)
            if tracker is None:
                tracker = self._trackers[sid] = FaceTracker(self.settings.track_min_frames,
                                                            self.settings.track_max_gap_s)
            faces = result.faces
            ids, ended, confirmed = tracker.update([f.box for f in faces], [f.label for f in faces],
                                                   [f.score for f in faces], now, [f.unsure for f in faces])
        for person in ended:
            self._count_person(camera, person.label)
        for face in result.faces:
            if not face.unsure:
                self.history.add("detections", camera, face.label, ts=now)
        if self.settings.alerts != "off":
            for track in confirmed:
                if track.label != WITH_MASK and not track.alerted:
                    track.alerted = True
                    alert = {"track": track.id, "label": track.label, "camera": camera,
                             "ts": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                    self.socketio.emit("alert", alert, to=sid, namespace="/")
                    self.socketio.emit("alert", {**alert, "camera_id": sid}, namespace="/dashboard")
        return ids

    def _run(self, fn, *args, **kwargs):
        """Run the model off the event loop in the green modes (it would block every socket)."""
        if self.settings.async_mode == "eventlet":
            from eventlet import tpool
            return tpool.execute(fn, *args, **kwargs)
        if self.settings.async_mode == "gevent":
            import gevent
            return gevent.get_hub().threadpool.apply(fn, args, kwargs)
        return fn(*args, **kwargs)

    def _work(self, pipeline: Pipeline) -> None:
        while self._running:
            job = self.slots.take(timeout=1.0)
            if job is None:
                continue
            sid, pending = job
            try:
                tiles = pending.number % max(self.settings.tile_every, 1) == 0
                result = self._run(pipeline.process, pending.image, tiles=tiles)
                camera = pending.camera or self.stats.camera_name(sid)
                ids = self._track(sid, camera, result, time.time())
                payload = {"seq": pending.seq, **result.to_dict()}
                for face, track_id in zip(payload["faces"], ids):
                    face["track"] = track_id
                self.socketio.emit("detections", payload, to=sid, namespace="/")
                self.stats.record(sid, pending.camera, [f.label for f in result.faces if not f.unsure],
                                  result.ms["total"])
            except FrameError as exc:
                self.socketio.emit("frame_error", error_payload(pending.seq, exc.code, exc.message),
                                   to=sid, namespace="/")
            except Exception:  # noqa: BLE001 - one bad frame must not kill the worker
                log.exception("inference failed for a frame of %s", sid)
                self.socketio.emit("frame_error", error_payload(pending.seq, "internal",
                                   "the server could not process this frame"), to=sid, namespace="/")
            finally:
                self.slots.done(sid)

    def _persist(self) -> None:
        """Write history about once a second (bounded loss on a hard kill); prune hourly."""
        last_prune = 0.0
        while self._running:
            self.socketio.sleep(1.0)
            try:
                # Called directly, not through eventlet's thread pool: the history's lock is
                # shared with the event handlers, and green locks must stay on the hub's thread.
                self.history.flush()
                if time.time() - last_prune > 3600:
                    last_prune = time.time()
                    self.history.prune()
            except Exception:  # noqa: BLE001 - a full disk must not stop the server
                log.exception("could not write history")

    def _broadcast(self) -> None:
        sent = -1
        while self._running:
            self.socketio.sleep(self.settings.counts_interval)
            if self.stats.version != sent:
                sent = self.stats.version
                self.socketio.emit("counts", self.stats.snapshot(), namespace="/dashboard")


class ServiceNamespace(Namespace):
    """A namespace bound to the inference service; connecting needs the access token."""

    def __init__(self, namespace: str, service: InferenceService) -> None:
        super().__init__(namespace)
        self.service = service

    def check_token(self) -> None:
        if not token_ok(request, self.service.settings.token):
            raise ConnectionRefusedError("unauthorized")


class CameraNamespace(ServiceNamespace):
    """Camera pages: send ``frame``, receive ``detections`` / ``frame_error`` / ``alert``."""

    def on_connect(self, auth: Any = None) -> None:
        self.check_token()
        name = auth.get("camera") if isinstance(auth, dict) and isinstance(auth.get("camera"), str) else None
        self.service.stats.camera_connected(request.sid, (name or "camera")[:MAX_CAMERA_NAME])
        log.info("camera connected: %s", request.sid)

    def on_disconnect(self, reason: Any = None) -> None:
        self.service.forget(request.sid)
        log.info("camera disconnected: %s", request.sid)

    def on_frame(self, data: Any = None) -> None:
        error = self.service.submit(request.sid, data)
        if error is not None:
            self.emit("frame_error", error, room=request.sid)


class DashboardNamespace(ServiceNamespace):
    """Dashboards: receive ``counts`` and ``alert``."""

    def on_connect(self, auth: Any = None) -> None:
        self.check_token()
        self.emit("counts", self.service.stats.snapshot(), room=request.sid)
