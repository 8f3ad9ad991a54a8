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
import time
from typing import Any, Callable

from flask import request
from flask_socketio import ConnectionRefusedError, Namespace, SocketIO

from webapp.config import Settings
from webapp.security import token_ok
from webapp.slots import FrameSlots, Pending
from webapp.stats import LiveStats
from webapp.vision.pipeline import FRAME_FORMATS, FrameError, Pipeline, TooLarge, sniff_format

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
        from webapp.vision.pipeline import NotAnImage
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
                 make_pipeline: Callable[[], Pipeline]) -> None:
        self.socketio = socketio
        self.settings = settings
        self.make_pipeline = make_pipeline
        self.slots = FrameSlots()
        self.stats = LiveStats()
        self.started = time.time()
        self._frame_numbers: dict[str, int] = {}
        self._running = False
        self._eventlet = settings.async_mode == "eventlet"

    def start(self) -> None:
        """Start the workers and the broadcaster (idempotent)."""
        if self._running:
            return
        self._running = True
        n = self.settings.workers or os.cpu_count() or 1
        pipelines = [self.make_pipeline() for _ in range(n)]  # load models now: fail fast
        for pipeline in pipelines:
            self.socketio.start_background_task(self._work, pipeline)
        self.socketio.start_background_task(self._broadcast)
        log.info("inference: %d worker(s), async mode %s", n, self.settings.async_mode)

    def stop(self) -> None:
        self._running = False
        self.slots.close()

    # -- frames ---------------------------------------------------------------------------

    def submit(self, sid: str, data: Any) -> dict | None:
        """Validate and park a frame; returns a ``frame_error`` payload if it was refused."""
        seq = data.get("seq") if isinstance(data, dict) and isinstance(data.get("seq"), int) else None
        try:
            seq, image, camera = parse_frame(data, self.settings.max_frame_bytes)
        except FrameError as exc:
            return error_payload(seq, exc.code, exc.message)
        number = self._frame_numbers.get(sid, 0)
        self._frame_numbers[sid] = number + 1
        replaced = self.slots.put(sid, Pending(seq, image, camera, time.time(), number))
        if replaced is not None:
            self.stats.frame_dropped(sid)
        return None

    def forget(self, sid: str) -> None:
        self.slots.discard(sid)
        self._frame_numbers.pop(sid, None)
        self.stats.camera_gone(sid)

    def _run(self, fn, *args, **kwargs):
        if self._eventlet:
            from eventlet import tpool  # inference must not block eventlet's hub
            return tpool.execute(fn, *args, **kwargs)
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
                payload = {"seq": pending.seq, **result.to_dict()}
                for face in payload["faces"]:
                    face["track"] = None
                self.socketio.emit("detections", payload, to=sid, namespace="/")
                self.stats.record(sid, pending.camera, [f.label for f in result.faces], result.ms["total"])
            except FrameError as exc:
                self.socketio.emit("frame_error", error_payload(pending.seq, exc.code, exc.message),
                                   to=sid, namespace="/")
            except Exception:  # noqa: BLE001 - one bad frame must not kill the worker
                log.exception("inference failed for a frame of %s", sid)
                self.socketio.emit("frame_error", error_payload(pending.seq, "internal",
                                   "the server could not process this frame"), to=sid, namespace="/")
            finally:
                self.slots.done(sid)

    def _broadcast(self) -> None:
        sent = -1
        while self._running:
            self.socketio.sleep(self.settings.counts_interval)
            if self.stats.version != sent:
                sent = self.stats.version
                self.socketio.emit("counts", self.stats.snapshot(), namespace="/dashboard")


class CameraNamespace(Namespace):
    """Camera pages: send ``frame``, receive ``detections`` / ``frame_error``."""

    def __init__(self, namespace: str, service: InferenceService) -> None:
        super().__init__(namespace)
        self.service = service

    def on_connect(self, auth: Any = None) -> None:
        if not token_ok(request, self.service.settings.token):
            raise ConnectionRefusedError("unauthorized")
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


class DashboardNamespace(Namespace):
    """Dashboards: receive ``counts``."""

    def __init__(self, namespace: str, service: InferenceService) -> None:
        super().__init__(namespace)
        self.service = service

    def on_connect(self, auth: Any = None) -> None:
        if not token_ok(request, self.service.settings.token):
            raise ConnectionRefusedError("unauthorized")
        self.emit("counts", self.service.stats.snapshot(), room=request.sid)
