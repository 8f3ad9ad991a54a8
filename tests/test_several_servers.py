"""Several servers behind one address (issue 12), with real Redis (pytest-redis), PostgreSQL
and nginx: a dashboard on one server sees the cameras, counts and alerts of the other; both
read one history; outages of Redis or PostgreSQL never stop the boxes and lose no buffered
minute; a browser camera page works through nginx with TLS."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import socketio
from sqlalchemy import func, select

from bench.nginx import Nginx
from tests.helpers import ROOT, Camera, LiveServer, answer, poll
from tests.services import PostgresServer
from tests.test_browser import stream_and_check
from webapp.history import History, database_url, schema_version

TOKEN = "building-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def building(redis_proc, postgres, tmp_path_factory):
    """Two maskwatch servers sharing Redis and PostgreSQL, and nginx in front of them."""
    certs = tmp_path_factory.mktemp("certs")
    subprocess.run([sys.executable, "-m", "webapp.cli", "gen-cert", "--out", str(certs)], check=True,
                   capture_output=True, timeout=60, cwd=ROOT)
    redis_url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    servers = {}
    for name in ("door-a", "door-b"):
        servers[name] = LiveServer(
            ["--token", TOKEN, "--redis", redis_url, "--database", postgres.url, "--server-name", name,
             "--max-client-connections", "0"],
            env={"MASKWATCH_WORKERS": "1", "MASKWATCH_PROXY_HOPS": "1",
                 "MASKWATCH_HISTORY_PATH": str(tmp_path_factory.mktemp(name) / "unused.sqlite3")})
    try:
        for server in servers.values():
            server.wait_ready()
        nginx = Nginx(tmp_path_factory.mktemp("nginx"), [s.port for s in servers.values()],
                      certs / "maskwatch-cert.pem", certs / "maskwatch-key.pem")
        cert = certs / "maskwatch-cert.pem"
        ok = poll(lambda: _status(nginx.url + "/healthz/1", cert), lambda code: code == 401, timeout=20)
        assert ok == 401, nginx.log.read_text()
        yield SimpleNamespace(a=servers["door-a"], b=servers["door-b"], nginx=nginx, cert=cert, redis=redis_proc,
                              postgres=postgres)
        nginx.stop()
    finally:
        for server in servers.values():
            server.stop()


def _status(url: str, cert: Path) -> int | None:
    """The status nginx answers with, its TLS certificate checked against ``maskwatch gen-cert``'s."""
    try:
        return requests.get(url, verify=str(cert), timeout=2).status_code
    except requests.RequestException:
        return None


def stats(server) -> dict:
    return requests.get(server.url + "/api/stats", headers=AUTH, timeout=5).json()


def history(server) -> list[dict] | None:
    r = requests.get(server.url + "/api/history?bucket=minute", headers=AUTH, timeout=10)
    return r.json()["rows"] if r.ok else None


def sure_faces(msg: dict) -> int:
    return sum(1 for f in msg["faces"] if not f["unsure"])


def detections_in_history(rows: list[dict] | None, camera: str) -> int | None:
    if rows is None:
        return None
    return sum(r["n"] for r in rows if r["camera"] == camera and r["kind"] == "detections")


def server_logs(building) -> str:
    """The end of both servers' logs, for a failure message."""
    return "\n".join(f"--- {name} ---\n{server.output()[-4000:]}" for name, server in
                     (("door-a", building.a), ("door-b", building.b)))


def test_a_dashboard_on_one_server_sees_the_other_servers_camera_counts_and_alerts(building, data_dir):
    image = (data_dir / "kaggle-facemask" / "images" / "maksssksksss1.jpg").read_bytes()  # one unmasked face
    dashboard = socketio.Client(reconnection=False)
    counts, alerts = [], []
    dashboard.on("counts", counts.append, namespace="/dashboard")
    dashboard.on("alert", alerts.append, namespace="/dashboard")
    dashboard.connect(building.b.url, namespaces=["/dashboard"], headers=AUTH, transports=["websocket"],
                      wait_timeout=10)
    cam = Camera(building.a.url, "north door", headers=AUTH)
    try:
        for i in range(10):
            assert answer(cam, {"seq": i, "image": image})[0] == "detections"
        assert poll(lambda: [a for a in alerts if a["camera"] == "north door"], bool, timeout=10)
        assert alerts[-1]["server"] == "door-a"
        seen = poll(lambda: [c for c in (counts[-1]["cameras"] if counts else []) if c["name"] == "north door"],
                    bool, timeout=10)
        assert seen and seen[0]["server"] == "door-a"
        # B reads A's cameras from Redis, which each server refreshes once a second: B may first
        # list the camera as A published it before its frames were counted
        listed = poll(lambda: [c for c in stats(building.b)["cameras"]
                               if c["name"] == "north door" and sum(c["in_view"].values()) >= 1], bool, timeout=10)
        assert listed and listed[0]["server"] == "door-a"
    finally:
        cam.close()
        dashboard.disconnect()
    # the camera left: the people it saw count building-wide, on B too
    assert poll(lambda: sum(stats(building.b)["people"].values()), lambda n: n >= 1, timeout=10) >= 1
    assert poll(lambda: [c for c in stats(building.b)["cameras"] if c["name"] == "north door"], lambda c: not c,
                timeout=10) == []


def test_both_servers_write_and_read_one_history(building, data_dir):
    """The same camera name on both servers in the same minutes: every detection lands once."""
    image = (data_dir / "kaggle-facemask" / "images" / "maksssksksss11.jpg").read_bytes()
    before = detections_in_history(history(building.a), "lobby") or 0
    sent = 0
    cams = [Camera(server.url, "lobby", headers=AUTH) for server in (building.a, building.b)]
    try:
        for i in range(8):
            for cam in cams:
                kind, msg = answer(cam, {"seq": i, "image": image})
                assert kind == "detections"
                sent += sure_faces(msg)
    finally:
        for cam in cams:
            cam.close()
    assert sent > 0
    # B writes its counts within about a second; the margin is for a loaded CI machine
    written = poll(lambda: detections_in_history(history(building.a), "lobby"), lambda n: n == before + sent,
                   timeout=30)
    assert written == before + sent, server_logs(building)
    # Both servers read one history. Polled: a person's row may be written (the camera's tracks end
    # on disconnect) between the two reads.
    a, b = poll(lambda: (history(building.a), history(building.b)), lambda rows: rows[0] == rows[1], timeout=10)
    assert a == b and detections_in_history(b, "lobby") == before + sent


def test_redis_then_postgres_outage_keeps_boxes_and_loses_no_buffered_minute(building, data_dir):
    image = (data_dir / "kaggle-facemask" / "images" / "maksssksksss11.jpg").read_bytes()
    cam = Camera(building.a.url, "outage door", headers=AUTH)
    sent = 0

    def stream(frames: int) -> None:
        nonlocal sent
        for _ in range(frames):
            kind, msg = answer(cam, {"seq": 0, "image": image}, timeout=5)
            assert kind == "detections"  # every frame answered, whatever is down
            sent += sure_faces(msg)
    try:
        stream(3)
        building.redis.stop()
        try:
            stream(10)
            own = ["outage door"]  # nobody vouches for the other servers' cameras now
            assert poll(lambda: [c["name"] for c in stats(building.a)["cameras"]], lambda n: n == own, timeout=5) == own
            stream(5)
        finally:
            building.redis.start()
        # Redis is back: B sees A's camera again
        assert poll(lambda: [c["name"] for c in stats(building.b)["cameras"]], lambda names: "outage door" in names,
                    timeout=10)
        building.postgres.stop()
        try:
            stream(10)
            r = requests.get(building.a.url + "/api/history", headers=AUTH, timeout=10)
            assert r.status_code == 503 and "not reachable" in r.json()["message"]
        finally:
            building.postgres.start()
        stream(3)
    finally:
        cam.close()
    written = poll(lambda: detections_in_history(history(building.a), "outage door"), lambda n: n == sent,
                   timeout=15)
    assert written == sent, server_logs(building)


def test_the_cameras_of_a_server_that_dies_leave_the_dashboards_within_10_s(building, postgres, tmp_path, data_dir):
    image = (data_dir / "kaggle-facemask" / "images" / "maksssksksss11.jpg").read_bytes()
    redis_url = f"redis://{building.redis.host}:{building.redis.port}/0"
    doomed = LiveServer(["--token", TOKEN, "--redis", redis_url, "--database", postgres.url, "--server-name", "door-c"],
                        env={"MASKWATCH_WORKERS": "1", "MASKWATCH_HISTORY_PATH": str(tmp_path / "unused.sqlite3")})
    try:
        doomed.wait_ready()
        cam = Camera(doomed.url, "west door", headers=AUTH)
        assert answer(cam, {"seq": 1, "image": image})[0] == "detections"
        names = lambda: [(c["name"], c["server"]) for c in stats(building.a)["cameras"]]  # noqa: E731
        assert ("west door", "door-c") in poll(names, lambda n: ("west door", "door-c") in n, timeout=10)
        doomed.kill_hard()  # a power cut: nothing is said to Redis
        start = time.monotonic()
        assert ("west door", "door-c") not in poll(names, lambda n: ("west door", "door-c") not in n, timeout=15)
        assert time.monotonic() - start < 10
    finally:
        if doomed.proc.poll() is None:
            doomed.stop()


def test_the_login_cookie_works_on_every_server(building):
    login = requests.post(building.a.url + "/login", data={"token": TOKEN}, allow_redirects=False, timeout=5)
    assert login.status_code == 302
    cookies = login.cookies
    assert requests.get(building.b.url + "/api/stats", cookies=cookies, timeout=5).ok
    assert requests.get(building.b.url + "/api/stats", timeout=5).status_code == 401


def test_nginx_serves_each_servers_health_and_a_browser_camera_over_tls(building, browser, data_dir, tmp_path):
    for n in (1, 2):
        r = requests.get(f"{building.nginx.url}/healthz/{n}", headers=AUTH, verify=str(building.cert), timeout=5)
        assert r.ok and r.json()["status"] == "ok"
    stream_and_check(browser, building.nginx.url, data_dir, tmp_path, https=True, query=f"?token={TOKEN}")


def test_servers_starting_together_on_a_new_database_create_its_schema_once(postgres, caplog):
    """Four servers' histories open one empty database at the same moment: none of them fails
    (before the schema lock, all but one saw 'relation "counts" already exists')."""
    url = postgres.create_database("fresh_start")
    opened, start = [], threading.Barrier(4)

    def open_history() -> None:
        start.wait()
        opened.append(History(database_url(url, None)))
    threads = [threading.Thread(target=open_history) for _ in range(4)]
    with caplog.at_level("WARNING", logger="webapp.history"):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    try:
        assert len(opened) == 4 and caplog.messages == []
        with opened[0].engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(schema_version)).scalar() == 1
    finally:
        for h in opened:
            h.close()


def test_a_single_server_needs_neither_redis_nor_postgres_clients(tmp_path):
    """Without --redis/--database the app builds, counts and writes history with the Redis and
    PostgreSQL client libraries made unimportable (as if never installed)."""
    code = ("import sys; sys.modules.update(redis=None, psycopg=None); from webapp import create_app; "
            f"app = create_app({{'history_path': {str(tmp_path / 'h.db')!r}}}); "
            "h = app.extensions['maskwatch'].history; "
            "h.add('people', 'door', 'with_mask'); assert h.flush() == 1; print(h.query()[0]['n'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_an_outage_is_logged_once_and_buffered_rows_are_written_when_the_database_is_back(postgres, caplog):
    from webapp.history import History, database_url
    history = History(database_url(postgres.url, None))
    history.add("detections", "log door", "with_mask", 2)
    assert history.flush() == 1
    postgres.stop()
    try:
        for _ in range(5):
            history.add("detections", "log door", "with_mask")
            assert history.flush() == 0
        assert history.buffered == 1
    finally:
        postgres.start()
    assert history.flush() == 1 and history.buffered == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "webapp.history"]
    assert len(warnings) == 2 and "unreachable" in warnings[0] and "is back" in warnings[1]
    assert sum(r["n"] for r in history.query() if r["camera"] == "log door") == 7
    history.close()


def test_redis_stats_keep_people_while_redis_is_down_and_log_once(redis_proc, caplog):
    from webapp.redis_stats import RedisStats
    url = f"redis://{redis_proc.host}:{redis_proc.port}/1"
    a, b = RedisStats(url, "a"), RedisStats(url, "b")
    a.add_person("without_mask")
    a.sync([{"id": "1", "name": "gate"}])
    assert b.sync([]) and b.remote_cameras()[0]["server"] == "a"
    redis_proc.stop()
    try:
        for _ in range(3):
            a.add_person("with_mask")
            a.sync([])
        assert a.people_today() == {"without_mask": 1, "with_mask": 3}
    finally:
        redis_proc.start()
    a.sync([])
    b.sync([])
    assert b.people_today() == {"without_mask": 1, "with_mask": 3}
    warnings = [r.getMessage() for r in caplog.records if r.name == "webapp.redis_stats"]
    assert len(warnings) == 2 and "unreachable" in warnings[0] and "back" in warnings[1]
