"""The connection model on a real server (issue 11): idle, slow and unauthenticated connections
are held cheaply or refused, so pages, /healthz and authorised cameras keep working.

Hostile clients connect from other loopback addresses (127.0.0.2...), as other machines on the
LAN would, so the per-address cap applies to them and not to the good clients on 127.0.0.1.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest
import requests

from tests.helpers import PNG, Camera, LiveServer, answer, poll

TOKEN = "connections-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    history = tmp_path_factory.mktemp("history") / "maskwatch.sqlite3"
    live = LiveServer(["--token", TOKEN], env={
        "MASKWATCH_WORKERS": "1", "MASKWATCH_HISTORY_PATH": str(history),
        "MASKWATCH_HEADER_TIMEOUT": "3", "MASKWATCH_MAX_CLIENT_CONNECTIONS": "100",
        "MASKWATCH_THREADS": "12"}).wait_ready()  # 12 threads: at most 4 WebSockets
    yield live
    live.stop()


def connect_from(address: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def healthz_seconds(server) -> float:
    start = time.monotonic()
    assert requests.get(server.url + "/healthz", headers=AUTH, timeout=5).ok
    return time.monotonic() - start


def camera_gets_boxes(server) -> bool:
    cam = Camera(server.url, headers=AUTH)
    try:
        return answer(cam, {"seq": 1, "image": PNG}, timeout=10)[0] == "detections"
    finally:
        cam.close()


def closed_by_server(sock: socket.socket, timeout: float) -> bytes:
    """What the server sent before closing ``sock`` (raises if it stays open past ``timeout``)."""
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def test_many_idle_slow_and_unauthenticated_connections_do_not_lock_others_out(server):
    with ExitStack() as held:
        # 1000 silent sockets from ten addresses (100 each: the most one address may hold)
        for i in range(1000):
            held.callback(connect_from(f"127.0.0.{2 + i // 100}", server.port).close)
        # 100 slowloris clients: an unfinished request head each
        for _ in range(100):
            sock = connect_from("127.0.0.20", server.port)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            held.callback(sock.close)
        # 200 WebSocket handshakes and 3000 polling handshakes without the token
        ws_request = (b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      b"Sec-WebSocket-Version: 13\r\n\r\n")
        websockets = [connect_from("127.0.0.21" if i < 100 else "127.0.0.22", server.port) for i in range(200)]
        for sock in websockets:
            held.callback(sock.close)
            sock.sendall(ws_request)

        def polling_handshakes(n: int) -> set[int]:
            with requests.Session() as session:
                return {session.get(server.url + "/socket.io/?EIO=4&transport=polling", timeout=10).status_code
                        for _ in range(n)}
        with ThreadPoolExecutor(8) as pool:
            statuses = set().union(*pool.map(polling_handshakes, [375] * 8))
        assert statuses == {401}
        assert all(closed_by_server(sock, 5).startswith(b"HTTP/1.1 401") for sock in websockets)

        assert healthz_seconds(server) < 1.0
        assert camera_gets_boxes(server)
    # everything closed: the server is whole again at once
    assert poll(lambda: healthz_seconds(server), lambda s: s < 1.0, timeout=5) < 1.0
    assert camera_gets_boxes(server)


def test_a_silent_or_slow_connection_is_closed_after_the_header_timeout(server):
    silent = connect_from("127.0.0.30", server.port)
    slow = connect_from("127.0.0.30", server.port)
    slow.sendall(b"GET /healthz HTTP/1.1\r\n")
    start = time.monotonic()
    assert closed_by_server(silent, 10) == b""
    assert closed_by_server(slow, 10) == b""
    assert 2.0 < time.monotonic() - start < 6.0  # header_timeout 3 s, swept once a second


def test_a_request_head_sent_in_pieces_is_answered(server):
    sock = connect_from("127.0.0.31", server.port)
    for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\nAuthorization: Bearer ", TOKEN.encode(),
                  b"\r\nConnection: close\r\n", b"\r\n"):
        sock.sendall(piece)
    assert closed_by_server(sock, 10).startswith(b"HTTP/1.1 200")


def test_one_address_may_hold_at_most_its_share_of_connections(server):
    with ExitStack() as held:
        for _ in range(100):
            held.callback(connect_from("127.0.0.40", server.port).close)
        refused = connect_from("127.0.0.40", server.port)
        reply = closed_by_server(refused, 5)
        assert reply.startswith(b"HTTP/1.1 503") and b"too many connections from 127.0.0.40" in reply
        assert healthz_seconds(server) < 1.0  # other addresses are not affected


def test_websockets_leave_threads_for_pages(server):
    """12 threads, 8 kept for pages: the fifth WebSocket is refused with 503 and /healthz answers."""
    import websocket
    url = server.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    with ExitStack() as held:
        for _ in range(4):
            ws = websocket.create_connection(url, header=[f"Authorization: Bearer {TOKEN}"], timeout=10)
            held.callback(ws.close)
            assert ws.recv().startswith("0{")
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(url, header=[f"Authorization: Bearer {TOKEN}"], timeout=10)
        assert refused.value.status_code == 503
        assert healthz_seconds(server) < 1.0
    # the slots come back once those sockets close
    assert poll(lambda: _websocket_opens(url), bool, timeout=5)


def _websocket_opens(url: str) -> bool:
    import websocket
    try:
        ws = websocket.create_connection(url, header=[f"Authorization: Bearer {TOKEN}"], timeout=10)
    except websocket.WebSocketBadStatusException:
        return False
    ws.close()
    return True
