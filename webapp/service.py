"""The inference service: one ``CameraSession`` per camera connection, the workers that run the
pipeline on their frames, people counting, alerts, history and the dashboard broadcast.

Where a frame goes, by name: ``parse_frame`` validates it once (types, size, image header) on
the socket's thread, ``FrameSlots`` parks it in its session (latest frame wins), a worker
decodes, detects and classifies it (``Pipeline.process_image``), ``CameraSession.observe``
tracks the faces and returns what happened (people who left, people newly confirmed), and the
service emits ``detections``, ``alert`` and ``counts`` and writes history.

Time comes from an injected clock, so tests run people counting on synthetic time.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

from webapp.config import Settings
from webapp.history import History, HistoryUnavailable
from webapp.redis_stats import RedisStats
from webapp.session import CameraSession, Observation
from webapp.slots import FrameSlots, Pending
from webapp.stats import CameraStats, LiveStats, local_midnight
from webapp.tracker import FaceTracker
from webapp.vision.labels import WITH_MASK
from webapp.vision.pipeline import (
    FRAME_FORMATS,
    FrameError,
    FrameResult,
    Pipeline,
    TooLarge,
    check_image_bytes,
    decode_pixels,
)

log = logging.getLogger(__name__)

MAX_CAMERA_NAME = 60
RECENT_ALERTS = 20  # sent to a dashboard when it connects, so it sees what it missed

OUTBOX_SIZE = 1000
Clock = Callable[[], float]


def server_name(settings: Settings) -> str:
    """How this server's cameras are labelled on a shared dashboard."""
    return settings.server_name or f"{socket.gethostname()}:{settings.port}"


class PayloadError(FrameError):
    code = "bad_payload"


def is_seq(value: Any) -> bool:
    """A frame's sequence number is an int; JSON's true/false arrive as bool, a subclass of int."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_frame(data: Any, max_bytes: int, max_pixels: int = 1920 * 1080) -> tuple[int, bytes, str | None, bool]:
    """(seq, image bytes, camera name, page hidden) of a ``frame`` event, or a typed error.

    The one validation of a camera frame: payload types, size against the frame limit, and
    the image header (format by magic bytes, pixel dimensions, completeness). The worker then
    only decodes pixels.
    """
    if not isinstance(data, dict):
        raise PayloadError("a frame is an object {seq, image, camera?}")
    seq = data.get("seq")
    if not is_seq(seq):
        raise PayloadError("'seq' must be an integer")
    image = data.get("image")
    if not isinstance(image, (bytes, bytearray, memoryview)):
        raise PayloadError("'image' must be binary JPEG or PNG data (send an ArrayBuffer or Blob)")
    image = bytes(image)
    camera = data.get("camera")
    if camera is not None and not isinstance(camera, str):
        raise PayloadError("'camera' must be a string")
    _, width, height = check_image_bytes(image, max_bytes, formats=FRAME_FORMATS,
                                         hint=" - send a smaller resolution or a lower JPEG quality")
    if width * height > max_pixels:  # refused before decoding: a small file can hold a huge frame
        raise TooLarge(f"frame is {width}x{height} px; cameras may send at most {max_pixels:,} pixels "
                       "(1920x1080 unless the server says otherwise) - send a smaller resolution")
    camera = (camera or "").strip()[:MAX_CAMERA_NAME] or None
    return seq, image, camera, data.get("hidden") is True


def error_payload(seq: int | None, code: str, message: str) -> dict:
    return {"seq": seq, "code": code, "message": message}


class Emitter(Protocol):
    def emit(self, event: str, data: Any, to: str | None = None, namespace: str | None = None,
             ignore_queue: bool = False) -> None: ...
    def start_background_task(self, target: Callable[..., Any], *args: Any) -> Any: ...
    def sleep(self, seconds: float) -> None: ...


class InferenceService:
    """Camera sessions, the inference workers and the dashboard broadcaster of one server.

    Models load and threads start on first use (``start``), so building the app is cheap;
    ``maskwatch serve`` starts it at once to fail fast on a broken model folder.
    """

    def __init__(self, socketio: Emitter, settings: Settings, make_pipeline: Callable[[int], Pipeline],
                 history: History, clock: Clock | None = None) -> None:
        self.socketio = socketio
        self.settings = settings
        self.make_pipeline = make_pipeline
        self.history = history
        self.clock: Clock = clock or time.time
        self.slots = FrameSlots()
        name = server_name(settings)
        self.shared = RedisStats(settings.redis_url, name) if settings.redis_url else None
        self.stats = LiveStats(name, self._people_today(history), self.shared)
        self.started = self.clock()
        self._recent_alerts: deque[dict] = deque(maxlen=RECENT_ALERTS)
        # Events for dashboards on every server go through Redis from one thread of their own,
        # so neither a slow nor a dead Redis ever holds up an inference worker.
        self._outbox: queue.Queue[tuple[str, dict]] = queue.Queue(maxsize=OUTBOX_SIZE)
        self._sessions: dict[str, CameraSession] = {}
        self._lock = threading.Lock()
        self._unnamed = itertools.count(1)
        self._running = False
        self._stopped = False  # a stopped service never starts again (late connects during shutdown)
        self._start_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Load the models, start the workers and the background loops (once)."""
        with self._start_lock:
            if self._running or self._stopped:
                return
            n = self.settings.workers or os.cpu_count() or 1
            pipelines = [self.make_pipeline(n) for _ in range(n)]  # load models now: fail fast
            self._running = True
        for pipeline in pipelines:
            self.socketio.start_background_task(self._work, pipeline)
        self.socketio.start_background_task(self._broadcast)
        self.socketio.start_background_task(self._persist)
        if self.shared is not None:
            self.socketio.start_background_task(self._share)
            self.socketio.start_background_task(self._send_outbox)
        log.info("inference: %d worker(s), async mode %s", n, self.settings.async_mode)

    def stop(self) -> None:
        """Graceful stop: count whoever is still in view and write the buffered history.
        Safe to call twice (the SIGTERM handler and gunicorn's worker exit both do)."""
        with self._start_lock:
            self._running, self._stopped = False, True
        self.slots.close()
        for sid in list(self._sessions):
            self.disconnect(sid)
        self.history.flush()
        if self.shared is not None:  # the people just counted, and no cameras here any more
            self.shared.sync([])

    # -- sessions -------------------------------------------------------------------------

    def connect(self, sid: str, name: str | None) -> CameraSession:
        """A camera page connected; unnamed cameras are numbered so a dashboard tells them apart."""
        self.start()
        name = (name or "").strip()[:MAX_CAMERA_NAME] or f"camera {next(self._unnamed)}"
        session = CameraSession(sid, name, FaceTracker(self.settings.track_min_frames, self.settings.track_max_gap_s),
                                CameraStats(sid, name, connected_at=self.clock()))
        with self._lock:
            self._sessions[sid] = session
        self.stats.touch()
        return session

    def disconnect(self, sid: str) -> None:
        """A camera left: drop its session, counting the people still in view."""
        with self._lock:
            session = self._sessions.pop(sid, None)
        if session is None:
            return
        self.slots.discard(session)
        for person in session.close():
            self._count_person(session.name, person.label)
        self.stats.touch()

    def sessions(self) -> list[CameraSession]:
        with self._lock:
            return list(self._sessions.values())

    def snapshot(self) -> dict:
        """The dashboard's ``counts`` payload (also ``GET /api/stats``)."""
        return self.stats.snapshot([s.stats for s in self.sessions()], self.clock())

    # -- frames ---------------------------------------------------------------------------

    def submit(self, sid: str, data: Any) -> dict | None:
        """Validate and park a frame; returns a ``frame_error`` payload if it was refused."""
        seq = data.get("seq") if isinstance(data, dict) and is_seq(data.get("seq")) else None  # echoed only if valid
        with self._lock:
            session = self._sessions.get(sid)
        if session is None:
            return error_payload(seq, "not_connected", "connect as a camera before sending frames")
        try:
            seq, image, camera, hidden = parse_frame(data, self.settings.max_frame_bytes,
                                                     self.settings.max_frame_pixels)
        except FrameError as exc:
            return error_payload(seq, exc.code, exc.message)
        session.stats.page_hidden = hidden
        if self.slots.put(session, Pending(seq, image, camera)) is not None:
            session.stats.dropped += 1
        return None

    def process(self, pipeline: Pipeline, session: CameraSession, pending: Pending) -> None:
        """Run one frame through the pipeline and tell everyone what it changed."""
        try:
            tiles = session.thorough_due(self.clock(), self.settings.thorough_every_s)
            result = self._run(lambda: pipeline.process_image(decode_pixels(pending.image),
                                                              t0=time.perf_counter(), tiles=tiles, live=True))
            now = self.clock()
            observed = session.observe(result, now)
            if observed is None:  # the camera left while its frame was processed
                return
            camera = session.display_name(pending)
            self._record(session, camera, observed, now)
            self._to_camera(session, "detections", {"seq": pending.seq, **observed.result.to_dict()})
        except FrameError as exc:
            self._to_camera(session, "frame_error", error_payload(pending.seq, exc.code, exc.message))
        except Exception:  # noqa: BLE001 - one bad frame must not kill the worker
            log.exception("inference failed for a frame of %s", session.sid)
            self._to_camera(session, "frame_error",
                            error_payload(pending.seq, "internal", "the server could not process this frame"))

    def _to_camera(self, session: CameraSession, event: str, data: dict) -> None:
        """A camera is always connected to this server: straight to it, never through Redis."""
        self.socketio.emit(event, data, to=session.sid, namespace="/", ignore_queue=True)

    def _record(self, session: CameraSession, camera: str, observed: Observation, now: float) -> None:
        """Counts, history and alerts for one observed frame."""
        for person in observed.left:
            self._count_person(camera, person.label)
        sure = [f for f in observed.result.faces if not f.unsure]
        for face in sure:
            self.history.add("detections", camera, face.label, ts=now)
        session.stats.record(camera, [f.label for f in sure], observed.result.ms["total"], now)
        self.stats.touch()
        if self.settings.alerts == "off":
            return
        for person in observed.confirmed:
            if person.label != WITH_MASK and person.track not in session.alerted:
                session.alerted.add(person.track)
                self._alert(session, {"track": person.track, "label": person.label, "camera": camera,
                                      "ts": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")})

    def _alert(self, session: CameraSession, alert: dict) -> None:
        dashboard_alert = {**alert, "camera_id": session.sid, "server": self.stats.server}
        self._recent_alerts.append(dashboard_alert)
        self._to_camera(session, "alert", alert)
        if self.shared is None:
            self.socketio.emit("alert", dashboard_alert, namespace="/dashboard")
            return
        self.shared.add_alert(dashboard_alert)
        try:
            self._outbox.put_nowait(("alert", dashboard_alert))
        except queue.Full:  # Redis is stuck: dashboards still get it from the replay list later
            log.debug("outbox full: alert for %s not broadcast live", session.name)

    def recent_alerts(self) -> list[dict]:
        """The last alerts of this server, or of the whole building with ``--redis``."""
        if self.shared is not None and not self.shared.down:
            return self.shared.recent_alerts()
        return list(self._recent_alerts)

    def _count_person(self, camera: str, label: str) -> None:
        self.stats.add_person(label)
        self.history.add("people", camera, label)

    def _people_today(self, history: History) -> dict[str, int]:
        """This server's people today from its history (with ``--redis`` they come from Redis)."""
        if self.shared is not None:
            return {}
        try:
            return dict(history.totals("people", local_midnight()))
        except HistoryUnavailable:
            log.warning("people today start at 0: the history database is not reachable")
            return {}

    # -- background loops -------------------------------------------------------------------

    def _run(self, fn: Callable[[], FrameResult]) -> FrameResult:
        """Run the model off the event loop in the green modes (it would block every socket)."""
        if self.settings.async_mode == "eventlet":
            from eventlet import tpool
            return tpool.execute(fn)
        if self.settings.async_mode == "gevent":
            import gevent
            return gevent.get_hub().threadpool.apply(fn)
        return fn()

    def _work(self, pipeline: Pipeline) -> None:
        while self._running:
            job = self.slots.take(timeout=1.0)
            if job is None:
                continue
            session, pending = job
            try:
                self.process(pipeline, session, pending)
            finally:
                self.slots.done(session)

    def _persist(self) -> None:
        """Write history about once a second (bounded loss on a hard kill); prune hourly."""
        last_prune = 0.0
        while self._running:
            self.socketio.sleep(1.0)
            try:
                # Called directly, not through eventlet's thread pool: the history's lock is
                # shared with the event handlers, and green locks must stay on the hub's thread.
                self.history.flush()
                if self.clock() - last_prune > 3600:
                    last_prune = self.clock()
                    self.history.prune()
            except Exception:  # noqa: BLE001 - a full disk must not stop the server
                log.exception("could not write history")

    def _share(self) -> None:
        """With ``--redis``: publish this server's cameras and counts, read the building's."""
        while self._running:
            self.socketio.sleep(1.0)
            cameras = [s.stats.snapshot(self.clock()) for s in self.sessions()]
            if self.shared.sync(cameras):
                self.stats.touch()

    def _send_outbox(self) -> None:
        while self._running:
            try:
                event, data = self._outbox.get(timeout=1.0)
            except queue.Empty:
                continue
            # Redis down: this server's dashboards still get it; the others from the replay list later.
            self.socketio.emit(event, data, namespace="/dashboard", ignore_queue=self.shared.down)

    def _broadcast(self) -> None:
        sent = -1
        while self._running:
            self.socketio.sleep(self.settings.counts_interval)
            sent = self.broadcast_if_changed(sent)

    def broadcast_if_changed(self, sent: int) -> int:
        """Send ``counts`` to dashboards if anything changed since version ``sent``; the version sent."""
        version = self.stats.version
        if version != sent:  # each server sends the building's snapshot to its own dashboards
            self.socketio.emit("counts", self.snapshot(), namespace="/dashboard", ignore_queue=True)
        return version
