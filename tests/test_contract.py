"""The public contract in-process, flaskr-style: ``create_app(test_config)``, ``app.test_client()``
and ``socketio.test_client()`` - every Socket.IO event, every bad payload, token, headers and
history errors, in seconds, without starting gunicorn.

Service logic (people counting, alerts) runs a scripted pipeline on synthetic time: the faces a
frame holds are set by the test, and the clock only moves when the test moves it. The real
model runs in-process for the ``detections`` contract.
"""

from __future__ import annotations

import csv
import io
from collections import deque

import cv2
import numpy as np
import pytest

from tests.helpers import PNG, Client, FakeClock, send
from webapp import create_app
from webapp.config import Settings
from webapp.vision.labels import LABELS
from webapp.vision.pipeline import Face, FrameResult, build_pipeline


class ScriptedPipeline:
    """Answers each frame with the next list of faces the test queued (none when the queue is empty)."""

    def __init__(self) -> None:
        self.script: deque[list[Face]] = deque()
        self.live: list[bool] = []  # how each frame was asked for
        self.tiles: list[bool] = []

    def process_image(self, image, t0=None, tiles=True, live=False) -> FrameResult:
        self.live.append(live)
        self.tiles.append(tiles)
        faces = self.script.popleft() if self.script else []
        return FrameResult(image.shape[1], image.shape[0], faces, {"decode": 0.0, "detect": 0.0,
                                                                   "classify": 0.0, "total": 1.0})


def face(x: float, label: str = "without_mask", score: float = 0.95, unsure: bool = False) -> Face:
    return Face((x, 10.0, x + 20.0, 30.0), label, score, 0.9, unsure)


@pytest.fixture
def scripted():
    return ScriptedPipeline()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def app(tmp_path, scripted, clock):
    app = create_app({"history_path": tmp_path / "h.db", "workers": 1, "counts_interval": 0.05,
                      "pipeline_factory": lambda sharing: scripted, "clock": clock})
    yield app
    app.extensions["maskwatch"].stop()


@pytest.fixture
def socketio(app):
    return app.extensions["maskwatch.socketio"]


def camera(app, socketio, name: str | None = "door") -> Client:
    return Client(app, socketio, flask_test_client=app.test_client(), auth={"camera": name} if name else None)


def test_create_app_is_cheap(tmp_path):
    """No model is loaded and no thread starts until something connects."""
    def refuse(_sharing):
        raise AssertionError("the pipeline must not be built by create_app")
    app = create_app({"history_path": tmp_path / "h.db", "pipeline_factory": refuse})
    assert app.test_client().get("/api/stats").json["cameras"] == []


def test_detections_follow_the_contract_with_the_real_model(tmp_path, model_dir, data_dir):
    pipeline = build_pipeline(Settings.load({"model_dir": model_dir}))
    app = create_app({"history_path": tmp_path / "h.db", "workers": 1, "pipeline_factory": lambda n: pipeline})
    try:
        cam = camera(app, app.extensions["maskwatch.socketio"])
        image = (data_dir / "kaggle-facemask" / "images" / "maksssksksss1.jpg").read_bytes()
        msg = send(cam, 7, image)
        assert set(msg) == {"seq", "width", "height", "faces", "ms"} and msg["seq"] == 7
        assert (msg["width"], msg["height"]) == (400, 156)
        assert set(msg["ms"]) == {"decode", "detect", "classify", "total"}
        assert len(msg["faces"]) >= 4
        for f in msg["faces"]:
            assert list(f) == ["box", "label", "score", "det_score", "unsure", "track"]
            assert f["label"] in LABELS and 0 <= f["score"] <= 1 and 0 <= f["det_score"] <= 1
            assert isinstance(f["unsure"], bool) and f["track"] >= 1
    finally:
        app.extensions["maskwatch"].stop()


BAD = [
    ("not an object", "frame", "bad_payload"),
    ("seq missing", {"image": PNG}, "bad_payload"),
    ("seq not int", {"seq": "1", "image": PNG}, "bad_payload"),
    ("seq bool", {"seq": True, "image": PNG}, "bad_payload"),
    ("image missing", {"seq": 1}, "bad_payload"),
    ("image not binary", {"seq": 1, "image": "aGVsbG8="}, "bad_payload"),
    ("camera not str", {"seq": 1, "image": PNG, "camera": 5}, "bad_payload"),
    ("text as image", {"seq": 1, "image": b"hello world"}, "not_an_image"),
    ("empty image", {"seq": 1, "image": b""}, "not_an_image"),
    ("webp", {"seq": 1, "image": cv2.imencode(".webp", np.zeros((8, 8, 3), np.uint8))[1].tobytes()}, "not_an_image"),
    ("truncated jpeg", {"seq": 1, "image": b"\xff\xd8\xff\xe0" + b"\0" * 100}, "not_an_image"),
    ("truncated png", {"seq": 1, "image": PNG[:-20]}, "not_an_image"),
    ("too large", {"seq": 1, "image": b"\xff\xd8\xff" + b"\0" * (2 * 1024 * 1024 + 10)}, "too_large"),
    ("too many pixels", {"seq": 1, "image": cv2.imencode(".png", np.zeros((4100, 8, 3), np.uint8))[1].tobytes()},
     "too_large"),
    ("more than 1920x1080", {"seq": 1, "image": cv2.imencode(".jpg", np.zeros((1200, 1920, 3), np.uint8))[1].tobytes()},
     "too_large"),
]


@pytest.mark.parametrize("name, payload, code", BAD, ids=[b[0] for b in BAD])
def test_bad_frames_get_errors_and_the_connection_stays_usable(app, socketio, name, payload, code):
    cam = camera(app, socketio)
    cam.emit("frame", payload)
    error = cam.wait_for("frame_error")
    assert error["code"] == code and error["message"]
    if isinstance(payload, dict) and isinstance(payload.get("seq"), int) and not isinstance(payload["seq"], bool):
        assert error["seq"] == payload["seq"]
    else:
        assert error["seq"] is None  # an invalid seq is never echoed
    assert send(cam, 99)["seq"] == 99


def test_a_jpeg_with_bytes_after_its_end_marker_is_accepted(app, socketio):
    jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tobytes()
    assert send(camera(app, socketio), 5, jpeg + b"trailer from a camera")["seq"] == 5


def test_people_are_counted_once_on_synthetic_time(app, socketio, scripted, clock):
    """Two people walk past; each is counted once when their track ends, not per frame."""
    cam = camera(app, socketio)
    for i in range(6):
        scripted.script.append([face(10 + 5 * i, "with_mask"), face(200 - 5 * i, "without_mask")])
        send(cam, i)
        clock.now += 0.1
    assert app.test_client().get("/api/stats").json["people"] == {label: 0 for label in LABELS}  # still in view
    clock.now += 2.0  # both gone longer than the track gap
    send(cam, 6)
    stats = app.test_client().get("/api/stats").json
    assert stats["people"] == {"with_mask": 1, "mask_incorrect": 0, "without_mask": 1}
    assert stats["compliance"] == 0.5
    assert scripted.live == [True] * 7  # camera frames use the model's live-video decisions


def test_the_thorough_pass_is_scheduled_in_camera_time(app, socketio, scripted, clock):
    """Every 0.3 s per camera (the default), whatever the frame rate; the first frame gets it."""
    fast, slow = camera(app, socketio, "fast"), camera(app, socketio, "slow")
    expected = []
    for i in range(16):  # 25 frames/s from one camera, 5 frames/s from the other
        send(fast, i)
        expected.append(i in (0, 8))  # 0.32 s after its first frame
        if i % 5 == 0:
            send(slow, i)
            expected.append(i in (0, 10))  # 0.2 s after its first frame is too soon, 0.4 s is due
        clock.now += 0.04
    clock.now -= 3600  # the wall clock set back an hour: not an hour without far faces
    send(fast, 16)
    assert scripted.tiles == expected + [True]


def test_alerts_reach_the_camera_and_later_dashboards(app, socketio, scripted, clock):
    cam = camera(app, socketio)
    for i in range(4):
        scripted.script.append([face(50 + i, "without_mask")])
        send(cam, i)
        clock.now += 0.1
    alert = cam.wait_for("alert")
    assert alert["label"] == "without_mask" and alert["camera"] == "door" and alert["track"] >= 1
    dashboard = Client(app, socketio, "/dashboard")  # opened after the alert
    dashboard.wait_for("counts")
    missed = dashboard.wait_for("alert")
    assert missed["track"] == alert["track"] and missed["camera_id"]
    for i in range(4, 8):  # the same person stays: no second alert
        scripted.script.append([face(50 + i, "without_mask")])
        send(cam, i)
    assert len(cam.received("alert")) == 1


def test_counts_are_sent_only_when_something_changed(tmp_path, scripted):
    # The background broadcaster waits an hour here, so only the test's own calls send.
    app = create_app({"history_path": tmp_path / "h.db", "workers": 1, "counts_interval": 3600,
                      "pipeline_factory": lambda sharing: scripted})
    socketio, service = app.extensions["maskwatch.socketio"], app.extensions["maskwatch"]
    dashboard = Client(app, socketio, "/dashboard")
    dashboard.wait_for("counts")  # on connect
    sent = service.broadcast_if_changed(-1)
    assert len(dashboard.received("counts")) == 2
    assert service.broadcast_if_changed(sent) == sent and len(dashboard.received("counts")) == 2  # nothing new
    cam = camera(app, socketio)
    send(cam, 1)
    service.broadcast_if_changed(sent)
    counts = dashboard.received("counts")
    assert len(counts) == 3 and [c["name"] for c in counts[-1]["cameras"]] == ["door"]
    service.stop()


def test_a_camera_page_in_the_background_is_flagged_on_the_dashboard(app, socketio):
    cam = camera(app, socketio)
    cam.emit("frame", {"seq": 1, "image": PNG, "hidden": True})
    cam.wait_for("detections")
    assert app.test_client().get("/api/stats").json["cameras"][0]["page_hidden"] is True
    send(cam, 2)
    assert app.test_client().get("/api/stats").json["cameras"][0]["page_hidden"] is False


def test_unnamed_cameras_get_distinct_names_and_leave_at_once(app, socketio):
    a, b = camera(app, socketio, None), camera(app, socketio, None)
    names = sorted(c["name"] for c in app.test_client().get("/api/stats").json["cameras"])
    assert names == ["camera 1", "camera 2"]
    a.disconnect()  # the page's Stop button disconnects
    assert [c["name"] for c in app.test_client().get("/api/stats").json["cameras"]] == ["camera 2"]
    b.disconnect()


def test_frames_from_a_socket_that_is_not_a_camera_are_refused(app, socketio):
    dashboard = Client(app, socketio, "/dashboard")
    dashboard.emit("frame", {"seq": 1, "image": PNG})
    assert dashboard.received("detections") == [] and dashboard.received("frame_error") == []


def test_clients_cannot_send_the_reserved_connect_and_disconnect_events(app, socketio, scripted, clock):
    cam = camera(app, socketio, "door")
    cam.emit("disconnect", None)  # would hide the camera and count its people
    cam.emit("connect", {"camera": "renamed"})  # would rename it and reset its stats
    send(cam, 1)
    cameras = app.test_client().get("/api/stats").json["cameras"]
    assert [c["name"] for c in cameras] == ["door"] and cameras[0]["frames"] == 1
    dashboard = Client(app, socketio, "/dashboard")
    dashboard.wait_for("counts")
    dashboard.emit("connect", None)  # would make the server send counts and alerts again
    assert len(dashboard.received("counts")) == 1


@pytest.mark.parametrize("name", ['=HYPERLINK("http://x","y")', "+1+1", "-2", "@SUM(A1)"])
def test_history_csv_never_hands_a_spreadsheet_a_formula(app, socketio, scripted, name):
    cam = camera(app, socketio, name)
    scripted.script.append([face(10, "with_mask")])
    send(cam, 1)
    app.extensions["maskwatch"].history.flush()
    rows = list(csv.DictReader(io.StringIO(app.test_client().get("/api/history.csv").text)))
    assert rows and {r["camera"] for r in rows} == {"'" + name}
    assert app.test_client().get("/api/history").json["rows"][0]["camera"] == name  # JSON keeps the name


def test_token_guards_pages_api_and_sockets(tmp_path, scripted):
    app = create_app({"history_path": tmp_path / "h.db", "token": "s3cret", "pipeline_factory": lambda n: scripted})
    sio = app.extensions["maskwatch.socketio"]
    client = app.test_client()
    assert client.get("/").status_code == 302 and client.get("/api/stats").status_code == 401
    assert client.get("/api/stats", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    wrong = client.get("/dashboard?token=guess&x=1")
    location = wrong.headers["Location"]
    assert wrong.status_code == 302 and "guess" not in location and "x%3D1" in location
    refused = sio.test_client(app, flask_test_client=app.test_client())
    assert not refused.is_connected()
    # Refused at the Engine.IO handshake already: no session is made for a client without the token.
    handshake = app.test_client().get("/socket.io/?EIO=4&transport=polling")
    assert handshake.status_code == 401 and handshake.headers["X-Content-Type-Options"] == "nosniff"
    bearer = {"Authorization": "Bearer s3cret"}
    assert client.get("/socket.io/?EIO=4&transport=polling", headers=bearer).status_code == 200
    client.post("/login", data={"token": "s3cret"})
    allowed = sio.test_client(app, flask_test_client=client, namespace="/dashboard")
    assert allowed.is_connected("/dashboard")
    app.extensions["maskwatch"].stop()


def test_login_slows_down_token_guessing(tmp_path, scripted):
    app = create_app({"history_path": tmp_path / "h.db", "token": "s3cret", "pipeline_factory": lambda n: scripted})
    client = app.test_client()
    codes = [client.post("/login", data={"token": f"guess{i}"}).status_code for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    refused = client.post("/login", data={"token": "guess"})
    assert int(refused.headers["Retry-After"]) > 0 and b"try again" in refused.data
    throttle = app.extensions["maskwatch.login_throttle"]
    assert throttle.retry_after("10.0.0.9") == 0  # other addresses are not held up
    throttle.clock = lambda: 1e12  # a minute later, the address may try again
    assert client.post("/login", data={"token": "s3cret"}).status_code == 302


def test_pages_carry_security_headers_and_no_inline_script(app):
    for path in ("/", "/dashboard", "/login"):
        r = app.test_client().get(path)
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY"
        assert b"<script>" not in r.data


def test_socketio_endpoint_responses_carry_the_security_headers(app):
    r = app.test_client().get("/socket.io/?EIO=4&transport=polling")
    assert r.status_code == 200 and r.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert app.test_client().get("/socket.io/?EIO=4&transport=nonsense").headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("query, message", [("bucket=day", "bucket"), ("since=yesterday", "ISO-8601"),
                                            ("since=9999-12-31T23:59:59-23:59", "ISO-8601")])
def test_history_rejects_bad_parameters(app, query, message):
    for path in ("/api/history", "/api/history.csv"):
        r = app.test_client().get(f"{path}?{query}")
        assert r.status_code == 400 and message in r.json["message"]
