"""Hostile Socket.IO input on a real server: malformed packets close only their own connection,
the camera leaves the dashboard at once, and the server keeps serving everyone else."""

from pathlib import Path

import pytest
import requests
import socketio

from tests.helpers import PNG, Camera, answer, poll


def cameras(server) -> list[str]:
    return [c["name"] for c in requests.get(server.url + "/api/stats", timeout=5).json()["cameras"]]


@pytest.mark.parametrize("packets", [
    ['451-["frame",{"seq":1,"image":{"_placeholder":true,"num":7}}]', b"\xff\xd8 bytes"],  # bad placeholder
    ['453-["frame",{"seq":1,"image":{"_placeholder":true,"num":0}}]'],  # hoards attachments
    ["2{not json"],  # an event that is not JSON
    ["9"],  # no such packet type
], ids=["bad placeholder", "three attachments", "not json", "unknown packet type"])
def test_malformed_packets_close_only_that_connection(live_server, packets):
    bad = Camera(live_server.url, "bad camera")
    good = Camera(live_server.url, "good camera")
    try:
        assert answer(good, {"seq": 1, "image": PNG})[0] == "detections"
        for packet in packets:
            bad.sio.eio.send(packet)
        assert poll(lambda: bad.sio.connected, lambda connected: not connected, timeout=5) is False
        assert poll(lambda: cameras(live_server), lambda names: "bad camera" not in names, timeout=5) == ["good camera"]
        assert answer(good, {"seq": 2, "image": PNG})[0] == "detections"
        again = Camera(live_server.url, "bad camera")  # the client may come back
        assert answer(again, {"seq": 1, "image": PNG})[0] == "detections"
        again.close()
    finally:
        bad.close() if bad.sio.connected else None
        good.close()


def test_engineio_garbage_on_a_new_socket_is_refused_cleanly(live_server):
    r = requests.post(live_server.url + "/socket.io/?EIO=4&transport=polling&sid=nonexistent", data=b"garbage",
                      timeout=5)
    assert r.status_code == 400
    client = socketio.Client(reconnection=False)
    client.connect(live_server.url, transports=["websocket"], wait_timeout=10)
    assert client.connected
    client.disconnect()


def worker_rss_mb(server) -> float:
    """Resident memory of the gunicorn worker (the server process's child), from /proc."""
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    status = Path(f"/proc/{children[0]}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024


def test_a_huge_websocket_message_is_cut_off_while_it_arrives(live_server):
    """60 MB in one WebSocket message, without a token or a Socket.IO connection: the server
    closes the socket once the message passes its limit instead of buffering all of it."""
    import websocket
    before = worker_rss_mb(live_server)
    ws = websocket.create_connection(live_server.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket",
                                     timeout=10)
    assert ws.recv().startswith("0{")  # Engine.IO open packet
    with pytest.raises((websocket.WebSocketException, OSError)):
        ws.send_binary(b"4" + b"x" * (60 * 1024 * 1024))
        ws.recv()  # the server has closed the socket (1009 message too big)
    ws.close()
    assert worker_rss_mb(live_server) - before < 20
    assert requests.get(live_server.url + "/healthz", timeout=5).ok
