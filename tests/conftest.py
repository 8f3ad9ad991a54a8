"""Shared fixtures: where the real datasets and the shipped model are, and synthetic data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from webapp.config import Settings

ROOT = Path(__file__).resolve().parent.parent

# Set before any test module imports TensorFlow (collection imports training.train): the
# detector's training step crashes in TensorFlow's oneDNN kernels (see training/train_detector.py).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.load()


@pytest.fixture(scope="session")
def data_dir(settings: Settings) -> Path:
    """The real datasets (MASKWATCH_DATA); tests needing them skip where they are absent."""
    needed = ("kaggle-facemask", "maskedfacenet-maskon", "chandrikadeb7-facemask")
    missing = [n for n in needed if not (settings.data_dir / n).is_dir()]
    if missing:
        pytest.skip(f"datasets not found under {settings.data_dir} ({', '.join(missing)}); "
                    "set MASKWATCH_DATA to the folder holding them (CI uses ../shared/datasets)")
    return settings.data_dir


@pytest.fixture(scope="session")
def weights_dir(settings: Settings) -> Path:
    """Keras' ImageNet backbone files (MASKWATCH_WEIGHTS), installed into $KERAS_HOME/models."""
    if settings.weights_dir is None or not Path(settings.weights_dir).is_dir():
        pytest.skip("MobileNetV2 ImageNet weights not found; set MASKWATCH_WEIGHTS "
                    "(CI uses ../shared/weights/keras)")
    from training.fit import install_offline_weights
    install_offline_weights(settings.weights_dir)
    return settings.weights_dir


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The shipped model in the repository."""
    return ROOT / "model"


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


@pytest.fixture(autouse=True, scope="session")
def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``maskwatch serve`` (gunicorn + Flask-SocketIO) in a subprocess on a loopback port."""

    def __init__(self, extra_args=(), env=None, scheme="http") -> None:
        import subprocess
        import sys
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "webapp.cli", "serve", "--port", str(self.port), *extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env={**os.environ, **(env or {})}, start_new_session=True)

    def kill_hard(self) -> None:
        """kill -9 the server and its worker, as a power cut or OOM kill would."""
        import signal
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def wait_ready(self, timeout: float = 60.0, verify=True) -> "LiveServer":
        import time

        import requests
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1, verify=verify).status_code in (200, 401):
                    return self
            except requests.RequestException:
                time.sleep(0.2)
        raise TimeoutError("server did not become ready")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=15)
        except Exception:  # noqa: BLE001
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    history = tmp_path_factory.mktemp("history") / "maskwatch.sqlite3"
    server = LiveServer(env={"MASKWATCH_WORKERS": "2", "MASKWATCH_HISTORY_PATH": str(history)}).wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def unsure_model(model_dir, tmp_path_factory):
    """A copy of the shipped model that calls every face unsure."""
    folder = tmp_path_factory.mktemp("unsure-model")
    for f in model_dir.iterdir():
        if f.is_file():
            shutil.copy(f, folder / f.name)
    contract = json.loads((folder / "labels.json").read_text())
    contract["unsure_below"] = 1.01  # above every probability: every face is unsure
    (folder / "labels.json").write_text(json.dumps(contract))
    return folder
