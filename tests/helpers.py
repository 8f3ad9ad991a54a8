"""Helpers shared by the tests: synthetic images, a real server in a subprocess and its
Socket.IO camera client, and the in-process test client with an injectable clock."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import socketio

from bench.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PNG = cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))[1].tobytes()


# -- synthetic images ------------------------------------------------------------------------

def synthetic_face(size: int = 96, seed: int = 0) -> np.ndarray:
    """A drawn 'face' (no dataset pixels): skin ellipse, eyes, optional mask band."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), rng.integers(60, 200, 3), np.uint8)
    c = size // 2
    cv2.ellipse(img, (c, c), (size // 3, size // 2 - 4), 0, 0, 360, (200, 160, 130), -1)
    cv2.circle(img, (c - size // 8, c - size // 8), 3, (30, 30, 30), -1)
    cv2.circle(img, (c + size // 8, c - size // 8), 3, (30, 30, 30), -1)
    return img


def write_jpeg(path: Path, image_rgb: np.ndarray, quality: int = 90) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    path.write_bytes(buf.tobytes())


def write_png(path: Path, image_rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(buf.tobytes())


def voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    objs = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for name, b in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>{objs}</annotation>")



def poll(fetch, done, timeout: float = 10.0, every: float = 0.05):
    """``fetch()`` until ``done(value)``, at most ``timeout`` seconds; the last value either way."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(every)
        value = fetch()
    return value


# -- a real server ---------------------------------------------------------------------------


class LiveServer:
    """``maskwatch serve`` (gunicorn + Flask-SocketIO) in a subprocess on a loopback port."""

    def __init__(self, extra_args=(), env=None, scheme="http") -> None:
        import subprocess
        import sys
        import tempfile
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        # The server's output goes to a file, not a pipe: nobody reads a pipe while the test
        # runs, and a full one would block the server at its next log line.
        self.log = tempfile.NamedTemporaryFile(prefix=f"maskwatch-{self.port}-", suffix=".log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "webapp.cli", "serve", "--port", str(self.port), *extra_args],
            stdout=self.log, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env={**os.environ, **(env or {})}, start_new_session=True)

    def output(self) -> str:
        """What the server printed and logged so far (for failure messages)."""
        return Path(self.log.name).read_text(errors="replace")

    def kill_hard(self) -> None:
        """kill -9 the server and its worker, as a power cut or OOM kill would."""
        import signal
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def wait_ready(self, timeout: float = 60.0, verify=True) -> "LiveServer":
        import requests

        def status() -> int | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                return requests.get(self.url + "/healthz", timeout=1, verify=verify).status_code
            except requests.RequestException:
                return None
        if poll(status, lambda code: code in (200, 401), timeout, every=0.2) not in (200, 401):
            raise TimeoutError("server did not become ready")
        return self

    def stop(self) -> str:
        """Stop the server (SIGTERM, then SIGKILL after 30 s); returns its whole output."""
        import subprocess
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        out = self.output()
        self.log.close()
        return out


class Camera:
    """A python-socketio camera client that records what the server sends it; ``answer`` waits
    on a condition its event handlers notify, so nothing polls."""

    def __init__(self, url: str, name: str | None = None, headers: dict | None = None) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.detections, self.errors = [], []
        self.answered = threading.Condition()
        self.sio.on("detections", lambda msg: self._record(self.detections, msg))
        self.sio.on("frame_error", lambda msg: self._record(self.errors, msg))
        self.sio.connect(url, transports=["websocket"], auth={"camera": name} if name else None,
                         headers=headers or {}, wait_timeout=10)

    def _record(self, received: list, msg) -> None:
        with self.answered:
            received.append(msg)
            self.answered.notify_all()

    def close(self):
        self.sio.disconnect()


def answer(cam: Camera, payload, timeout=20.0):
    """Send a frame; the server's ``detections`` or ``frame_error`` for it."""
    with cam.answered:
        n_det, n_err = len(cam.detections), len(cam.errors)
        cam.sio.emit("frame", payload)
        if not cam.answered.wait_for(lambda: len(cam.errors) > n_err or len(cam.detections) > n_det, timeout):
            raise AssertionError("no answer from the server")
        return ("frame_error", cam.errors[-1]) if len(cam.errors) > n_err else ("detections", cam.detections[-1])


# -- in-process ------------------------------------------------------------------------------

class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Client:
    """A Socket.IO test client that keeps every packet, so waiting for one event never throws
    away another that arrived with it (a frame's ``alert`` comes just before its ``detections``)."""

    def __init__(self, app, socketio, namespace: str = "/", **kwargs) -> None:
        self.sio = socketio.test_client(app, namespace=namespace, **kwargs)
        self.namespace = namespace
        self.packets: list[dict] = []
        self.seen: dict[str, int] = {}

    def emit(self, event: str, data) -> None:
        self.sio.emit(event, data, namespace=self.namespace)

    def received(self, event: str) -> list:
        self.packets += self.sio.get_received(self.namespace)
        return [p["args"][0] for p in self.packets if p["name"] == event]

    def wait_for(self, event: str, timeout: float = 10.0):
        """The next ``event`` not returned before (polls: the workers answer from their own threads)."""
        n = self.seen.get(event, 0)
        events = poll(lambda: self.received(event), lambda found: len(found) > n, timeout, every=0.005)
        if len(events) <= n:
            raise AssertionError(f"no {event!r} within {timeout} s")
        self.seen[event] = n + 1
        return events[n]

    def disconnect(self) -> None:
        self.sio.disconnect(namespace=self.namespace)


def send(client: Client, seq: int, image: bytes = PNG) -> dict:
    client.emit("frame", {"seq": seq, "image": image})
    return client.wait_for("detections")
