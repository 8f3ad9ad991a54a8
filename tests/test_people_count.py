"""Acceptance: a video of N distinct people walking past one camera counts exactly N, per class.

The video is composed at test time from dataset faces (never stored) walking across a plain
background, sent frame by frame like the camera page does (one frame in flight), to the app
in-process with an injected clock, so the walk takes no wall-clock time. Faces are picked so
the served pipeline labels the still face as its ground truth: this test is about tracking and
counting, the classifier has its own tests.
"""

import cv2
import numpy as np
import pytest

from tests.helpers import Client, FakeClock, send
from training.datasets import CHANDRIKA, MASKON, load_all, read_rgb, split_by_image
from webapp import create_app
from webapp.config import Settings
from webapp.vision.crop import cut_face
from webapp.vision.pipeline import build_pipeline

SIZE = 150
WANT = {"with_mask": 2, "without_mask": 2, "mask_incorrect": 1}


def encode(frame_rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def background() -> np.ndarray:
    y = np.linspace(90, 160, 480, dtype=np.float32)[:, None, None]
    return np.broadcast_to(y, (480, 640, 3)).astype(np.uint8).copy()


@pytest.fixture(scope="module")
def people(data_dir, model_dir):
    """(label, face patch) for N people whose still face the pipeline labels correctly."""
    pipeline = build_pipeline(Settings.load({"model_dir": model_dir}))
    _, val = split_by_image(load_all(data_dir, (MASKON, CHANDRIKA)), 0.25, 1234)
    chosen, need = [], dict(WANT)
    for sample in val:
        label = sample.faces[0].label
        if not need.get(label):
            continue
        patch = cut_face(read_rgb(sample.path, orient=sample.whole_image), sample.faces[0].box, SIZE, 0.25)
        frame = background()
        frame[165:165 + SIZE, 245:245 + SIZE] = patch
        result = pipeline.process(encode(frame))
        if len(result.faces) == 1 and result.faces[0].label == label and result.faces[0].score > 0.9:
            chosen.append((label, patch))
            need[label] -= 1
        if not any(need.values()):
            return chosen
    pytest.fail(f"not enough clearly labelled faces: still need {need}")


def test_people_walking_past_are_counted_exactly(people, model_dir, tmp_path):
    """In-process with the real model, on synthetic time: ~14 frames a second while someone
    walks past, then 1.3 s of empty doorway, so each track ends before the next person."""
    pipeline = build_pipeline(Settings.load({"model_dir": model_dir}))
    clock = FakeClock()
    app = create_app({"history_path": tmp_path / "h.db", "workers": 1, "clock": clock,
                      "pipeline_factory": lambda sharing: pipeline})
    service = app.extensions["maskwatch"]
    cam = Client(app, app.extensions["maskwatch.socketio"], flask_test_client=app.test_client(),
                 auth={"camera": "walk test"})
    try:
        seq = 0
        for label, patch in people:
            for x in np.linspace(0, 640 - SIZE, 14).astype(int):  # walks across the frame
                frame = background()
                frame[165:165 + SIZE, x:x + SIZE] = patch
                assert send(cam, seq, encode(frame))["faces"]
                seq += 1
                clock.now += 0.07
            for _ in range(3):  # the doorway is empty until the next person
                send(cam, seq, encode(background()))
                seq += 1
                clock.now += 0.07
            clock.now += 1.3
        send(cam, seq, encode(background()))  # ends the last track
        assert app.test_client().get("/api/stats").json["people"] == WANT
        service.history.flush()
        frames = app.test_client().get("/api/history?bucket=hour").json["rows"]
        detections = sum(r["n"] for r in frames if r["kind"] == "detections")
        assert detections >= sum(WANT.values()) * 10  # frame-level counts are still there
    finally:
        cam.disconnect()
        service.stop()
