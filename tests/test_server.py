"""A real server (gunicorn + Flask-SocketIO on loopback) driven by real Socket.IO clients."""

import threading
from collections import Counter

import cv2
import numpy as np
import pytest
import requests
import socketio

from tests.helpers import Camera, answer, poll
from webapp.config import Settings
from webapp.slots import FrameSlots, Pending
from webapp.stats import CameraStats, LiveStats
from webapp.vision.classifier import MaskClassifier
from webapp.vision.labels import LABELS


@pytest.fixture
def frame_bytes(data_dir):
    return (data_dir / "kaggle-facemask" / "images" / "maksssksksss1.jpg").read_bytes()


def check_detections(msg, seq, width, height):
    assert set(msg) == {"seq", "width", "height", "faces", "ms"}
    assert msg["seq"] == seq and (msg["width"], msg["height"]) == (width, height)
    assert set(msg["ms"]) == {"decode", "detect", "classify", "total"}
    for face in msg["faces"]:
        assert list(face) == ["box", "label", "score", "det_score", "unsure", "track"]
        assert face["label"] in LABELS and 0 <= face["score"] <= 1
        assert isinstance(face["det_score"], float) and 0 <= face["det_score"] <= 1
        x0, y0, x1, y1 = face["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


def test_http_routes(live_server, model_dir):
    health = requests.get(live_server.url + "/healthz", timeout=5).json()
    assert health["status"] == "ok" and len(health["model"]["sha256"]) == 64
    assert health["model"]["file"] == "mask_classifier.tflite" and health["uptime_s"] >= 0  # no server paths
    assert health["classifier_models"][0] == health["model"]
    assert [m["file"] for m in health["classifier_models"]] == [m.path.name for m in MaskClassifier(model_dir).members]
    assert health["detector"] == "trained" and health["detector_model"]["file"] == "face_detector.tflite"
    assert len(health["detector_model"]["sha256"]) == 64
    for path in ("/", "/dashboard"):
        page = requests.get(live_server.url + path, timeout=5)
        assert page.ok and "/vendor/socket.io.min.js" in page.text
        assert "cdn" not in page.text.lower()
    assert requests.get(live_server.url + "/vendor/socket.io.min.js", timeout=5).ok
    assert requests.get(live_server.url + "/vendor/chart.umd.min.js", timeout=5).ok
    assert requests.get(live_server.url + "/vendor/../../etc/passwd", timeout=5).status_code == 404
    stats = requests.get(live_server.url + "/api/stats", timeout=5).json()
    assert set(stats) == {"in_view", "people", "compliance", "cameras", "ts"}


def test_real_frame_gets_detections(live_server, frame_bytes):
    cam = Camera(live_server.url, "door")
    try:
        kind, msg = answer(cam, {"seq": 7, "image": frame_bytes, "camera": "door"})
        assert kind == "detections"
        check_detections(msg, 7, 400, 156)
        labels = [f["label"] for f in msg["faces"]]
        assert len(labels) >= 4 and labels.count("with_mask") >= 3  # the photo shows masked people
    finally:
        cam.close()


def test_dashboard_counts_follow_frames_from_two_cameras(live_server, frame_bytes):
    dash = socketio.Client(reconnection=False)
    counts = []
    dash.on("counts", lambda c: counts.append(c), namespace="/dashboard")
    dash.connect(live_server.url, namespaces=["/dashboard"], transports=["websocket"], wait_timeout=10)
    a, b = Camera(live_server.url, "north door"), Camera(live_server.url, "south door")
    try:
        assert poll(lambda: len(counts), bool), "no counts on connect"
        people_at_start = sum(counts[-1]["people"].values())  # the server may serve other tests too
        blank = cv2.imencode(".png", np.zeros((120, 160, 3), np.uint8))[1].tobytes()
        results = {}

        def stream(cam, name, image, n):
            for i in range(n):
                results[(name, i)] = answer(cam, {"seq": i, "image": image, "camera": name})

        threads = [threading.Thread(target=stream, args=(a, "north door", frame_bytes, 5)),
                   threading.Thread(target=stream, args=(b, "south door", blank, 5))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(kind == "detections" for kind, _ in results.values()) and len(results) == 10
        faces_north = len(results[("north door", 4)][1]["faces"])
        def settled(last):  # a snapshot taken after every frame was counted (an earlier one can arrive last)
            cams = {c["name"]: c for c in last["cameras"]}
            both = {"north door", "south door"} <= set(cams)
            return both and all(cams[name]["frames"] == 5 for name in ("north door", "south door"))

        last = poll(lambda: counts[-1], settled, timeout=5)
        cams = {c["name"]: c for c in last["cameras"]}
        assert sum(cams["north door"]["in_view"].values()) == faces_north >= 4
        assert sum(cams["south door"]["in_view"].values()) == 0
        assert sum(last["in_view"].values()) == faces_north
        assert cams["north door"]["fps"] > 0
        api = requests.get(live_server.url + "/api/stats", timeout=5).json()
        assert api["in_view"] == last["in_view"]
        # Cameras leave: the people still in view are counted, once each. A person is a track seen
        # in at least track_min_frames frames, once sure: a far face found only by the detector's
        # thorough passes may have fewer sightings and is then no person (yet).
        seen, sure = Counter(), set()
        for i in range(5):
            for face in results[("north door", i)][1]["faces"]:
                seen[face["track"]] += 1
                if not face["unsure"]:
                    sure.add(face["track"])
        people = {t for t, n in seen.items() if n >= Settings().track_min_frames and t in sure}
        assert len(people) >= 4
        a.close()
        b.close()
        expected = people_at_start + len(people)
        poll(lambda: counts[-1], lambda c: sum(c["people"].values()) >= expected, timeout=5)
        assert sum(counts[-1]["people"].values()) == expected
        assert 0 <= counts[-1]["compliance"] <= 1
    finally:
        a.close()
        b.close()
        dash.disconnect()


def test_frame_slots_keep_only_the_newest_frame():
    slots = FrameSlots()
    p = lambda seq: Pending(seq, b"", None)  # noqa: E731
    assert slots.put("a", p(1)) is None
    assert slots.put("a", p(2)).seq == 1  # replaced, reported as dropped
    slots.put("b", p(10))
    key, job = slots.take(0.1)
    assert (key, job.seq) == ("a", 2)
    slots.put("a", p(3))  # arrives while a is being processed
    key, job = slots.take(0.1)
    assert (key, job.seq) == ("b", 10)  # a is busy: never two frames of one camera at once
    assert slots.take(0.05) is None
    slots.done("a")
    key, job = slots.take(0.1)
    assert (key, job.seq) == ("a", 3)
    slots.discard("a")
    slots.done("a")
    assert slots.take(0.05) is None


def test_live_stats_snapshot():
    stats, door = LiveStats("this server"), CameraStats("s1", "door")
    assert stats.snapshot([door], now=99.0)["compliance"] is None
    stats.add_person("with_mask")
    stats.add_person("with_mask")
    stats.add_person("without_mask")
    door.record("door", ["with_mask", "with_mask", "without_mask"], 12.0, now=100.0)
    door.record("door", ["with_mask", "without_mask"], 10.0, now=100.1)
    snap = stats.snapshot([door], now=100.2)
    assert snap["in_view"] == {"with_mask": 1, "mask_incorrect": 0, "without_mask": 1}
    assert snap["people"] == {"with_mask": 2, "mask_incorrect": 0, "without_mask": 1}
    assert snap["compliance"] == pytest.approx(2 / 3, abs=1e-4)
    assert snap["cameras"][0]["fps"] == pytest.approx(10.0)
    stale = stats.snapshot([door], now=200.0)
    assert stale["in_view"]["with_mask"] == 0
    assert stats.snapshot([], now=200.0)["cameras"] == []


@pytest.mark.parametrize("mode", ["eventlet", "gevent"])
def test_green_async_modes_serve_frames_from_several_cameras(mode, frame_bytes, tmp_path):
    """The opt-in modes run inference off their event loop; several cameras at once must not stall."""
    pytest.importorskip(mode, reason=f"pip install '.[{mode}]' for --async-mode {mode}")
    from tests.helpers import LiveServer

    server = LiveServer(["--async-mode", mode],
                        env={"MASKWATCH_WORKERS": "2", "MASKWATCH_HISTORY_PATH": str(tmp_path / "h.db")}).wait_ready()
    cams = [Camera(server.url, f"cam {i}") for i in range(3)]
    try:
        results = {}

        def stream(i, cam):
            results[i] = [answer(cam, {"seq": n, "image": frame_bytes})[0] for n in range(4)]

        threads = [threading.Thread(target=stream, args=(i, c)) for i, c in enumerate(cams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == {i: ["detections"] * 4 for i in range(3)}
        assert requests.get(server.url + "/healthz", timeout=5).json()["async_mode"] == mode
    finally:
        for cam in cams:
            cam.close()
        server.stop()
