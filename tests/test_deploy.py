"""Deployment at an entrance: history survives kill -9, access token, TLS, alerts once per person."""

import sqlite3
import subprocess
import sys
import time

import pytest
import requests
import socketio

from tests.helpers import ROOT, Camera, LiveServer, answer, free_port, poll


def stream(url, image, frames, name="door"):
    cam = Camera(url, name)
    for i in range(frames):
        kind, _ = answer(cam, {"seq": i, "image": image, "camera": name})
        assert kind == "detections"
    return cam


def test_history_survives_kill_9(data_dir, tmp_path):
    image = (data_dir / "kaggle-facemask" / "images" / "maksssksksss1.jpg").read_bytes()
    db = tmp_path / "history.sqlite3"
    env = {"MASKWATCH_HISTORY_PATH": str(db), "MASKWATCH_WORKERS": "1"}
    server = LiveServer(env=env).wait_ready()
    try:
        cam = stream(server.url, image, 6)
        cam.close()  # people still in view are counted when the camera leaves
        stats_before = poll(lambda: requests.get(server.url + "/api/stats", timeout=5).json(),
                            lambda s: not s["cameras"] and sum(s["people"].values()) >= 4)
        # History is written about once a second: wait until it holds every person counted.
        before = poll(lambda: requests.get(server.url + "/api/history?bucket=minute", timeout=5).json()["rows"],
                      lambda rows: sum(r["n"] for r in rows if r["kind"] == "people")
                      == sum(stats_before["people"].values()))
    finally:
        server.kill_hard()
    people = sum(r["n"] for r in before if r["kind"] == "people")
    detections = sum(r["n"] for r in before if r["kind"] == "detections")
    assert people >= 4 and detections >= 6 * people
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    server = LiveServer(env=env).wait_ready()
    try:
        after = requests.get(server.url + "/api/history?bucket=minute", timeout=5).json()["rows"]
        assert after == before
        assert requests.get(server.url + "/api/stats", timeout=5).json()["people"] == stats_before["people"]
        hourly = requests.get(server.url + "/api/history?bucket=hour", timeout=5).json()["rows"]
        assert sum(r["n"] for r in hourly if r["kind"] == "people") == people
        csv_text = requests.get(server.url + "/api/history.csv?bucket=minute", timeout=5).text
        lines = csv_text.strip().splitlines()
        assert lines[0] == "start,camera,label,kind,n"
        assert [ln.split(",") for ln in lines[1:]] == [[r["start"], r["camera"], r["label"], r["kind"], str(r["n"])]
                                                     for r in after]
        bad = requests.get(server.url + "/api/history?since=yesterday", timeout=5)
        assert bad.status_code == 400 and "ISO-8601" in bad.json()["message"]
    finally:
        server.stop()


def test_graceful_stop_counts_people_in_view_and_writes_every_detection(data_dir, tmp_path):
    """SIGTERM while a camera is still streaming: nothing seen is lost, and the stop is quick."""
    image = (data_dir / "kaggle-facemask" / "images" / "maksssksksss1.jpg").read_bytes()
    db = tmp_path / "history.sqlite3"
    server = LiveServer(env={"MASKWATCH_HISTORY_PATH": str(db), "MASKWATCH_WORKERS": "1"}).wait_ready()
    cam = stream(server.url, image, 5)  # stays connected: its people are still in view
    faces = sum(len(d["faces"]) for d in cam.detections)
    started = time.monotonic()
    output = server.stop()
    assert time.monotonic() - started < 10, output  # the server's log says where the stop waited
    with sqlite3.connect(db) as conn:
        totals = dict(conn.execute("SELECT kind, SUM(n) FROM counts GROUP BY kind").fetchall())
    unsure = sum(f["unsure"] for d in cam.detections for f in d["faces"])
    assert totals["detections"] == faces - unsure
    assert totals["people"] >= 4  # the people in view at the stop were counted


def test_alerts_fire_once_per_person(live_server, data_dir):
    image = (data_dir / "kaggle-facemask" / "images" / "maksssksksss1.jpg").read_bytes()  # one unmasked face
    cam = Camera(live_server.url, "alert door")
    alerts = []
    cam.sio.on("alert", alerts.append)
    try:
        for i in range(10):
            kind, msg = answer(cam, {"seq": i, "image": image, "camera": "alert door"})
        unmasked = [f for f in msg["faces"] if f["label"] != "with_mask" and not f["unsure"]]
        assert unmasked and all(f["track"] for f in msg["faces"])
        # A frame's alerts are sent before its detections, on the same ordered connection.
        assert len(alerts) == len({f["track"] for f in unmasked})
        assert {a["label"] for a in alerts} <= {"without_mask", "mask_incorrect"}
        assert alerts[0]["camera"] == "alert door"
    finally:
        cam.close()


def test_non_loopback_bind_needs_a_token():
    args = ["serve", "--host", "0.0.0.0", "--port", str(free_port())]
    proc = subprocess.run([sys.executable, "-m", "webapp.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "--token" in proc.stderr and "--no-auth" in proc.stderr


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    db = tmp_path_factory.mktemp("tok") / "h.sqlite3"
    server = LiveServer(["--host", "0.0.0.0", "--token", "s3cret-token"],
                        env={"MASKWATCH_WORKERS": "1", "MASKWATCH_HISTORY_PATH": str(db)}).wait_ready()
    yield server
    server.stop()


def test_token_is_required_everywhere(token_server):
    url = token_server.url
    for path in ("/", "/dashboard", "/vendor/socket.io.min.js"):
        r = requests.get(url + path, timeout=5, allow_redirects=False)
        assert r.status_code == 302 and "/login" in r.headers["Location"]
    for path in ("/api/stats", "/api/history", "/api/history.csv", "/healthz"):
        assert requests.get(url + path, timeout=5).status_code == 401
    assert requests.get(url + "/api/stats", timeout=5, cookies={"maskwatch_token": "wrong"}).status_code == 401
    for namespace in ("/", "/dashboard"):
        sio = socketio.Client(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            sio.connect(url, namespaces=[namespace], transports=["websocket"], wait_timeout=5)


def test_token_accepted_by_login_query_header_and_socket(token_server):
    url = token_server.url
    assert requests.get(url + "/api/stats", headers={"Authorization": "Bearer s3cret-token"}, timeout=5).ok
    s = requests.Session()
    r = s.post(url + "/login", data={"token": "nope"}, timeout=5)
    assert r.status_code == 401 and "not right" in r.text
    r = s.post(url + "/login", data={"token": "s3cret-token", "next": "/dashboard"}, timeout=5, allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "/dashboard"
    assert "HttpOnly" in r.headers["Set-Cookie"] and "SameSite=Strict" in r.headers["Set-Cookie"]
    assert s.get(url + "/dashboard", timeout=5).ok
    kiosk = requests.Session()
    r = kiosk.get(url + "/?token=s3cret-token", timeout=5, allow_redirects=False)
    assert r.status_code == 302 and "token" not in r.headers["Location"]
    assert kiosk.get(url + "/", timeout=5).ok
    sio = socketio.Client(reconnection=False)
    sio.connect(url, namespaces=["/dashboard"], transports=["websocket"], wait_timeout=5,
                headers={"Cookie": "maskwatch_token=s3cret-token"})
    assert sio.connected
    sio.disconnect()


def test_security_headers(live_server):
    r = requests.get(live_server.url + "/", timeout=5)
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["Referrer-Policy"] == "no-referrer" and r.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in r.text  # no inline script: every script has a src


def test_cross_origin_socket_is_refused(live_server):
    sio = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        sio.connect(live_server.url, transports=["websocket"], headers={"Origin": "http://evil.example"},
                    wait_timeout=5)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("cert")
    proc = subprocess.run([sys.executable, "-m", "webapp.cli", "gen-cert", "--out", str(out)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "iPhone" in proc.stdout and "Android" in proc.stdout
    return out / "maskwatch-cert.pem", out / "maskwatch-key.pem"


def test_tls_server_is_reached_by_a_client_trusting_the_certificate(tls_files, tmp_path):
    cert, key = tls_files
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    server = LiveServer(["--certfile", str(cert), "--keyfile", str(key)], scheme="https",
                        env={"MASKWATCH_WORKERS": "1", "MASKWATCH_HISTORY_PATH": str(tmp_path / "h.db")})
    server.url = server.url.replace("127.0.0.1", "localhost")
    try:
        server.wait_ready(verify=str(cert))
        assert requests.get(server.url + "/healthz", verify=str(cert), timeout=5).json()["status"] == "ok"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(server.url + "/healthz", timeout=5)  # not trusted without the certificate
        assert requests.get(server.url + "/", verify=str(cert), timeout=5).headers["Strict-Transport-Security"]
    finally:
        server.stop()
