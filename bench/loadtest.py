"""Load test: N simulated cameras stream real 640x480 JPEG frames to a real server.

    MASKWATCH_DATA=... python bench/loadtest.py [--clients 1 2 4 8] [--seconds 20]
                                                [--worker guarded gthread gevent eventlet]
                                                [--servers 1 2 [--redis off on]]

Each camera is a python-socketio client paced like the camera page: one frame in flight,
the next sent when the answer arrives. Prints per-client fps, total frames/s, round-trip
p50/p95, p50 in the first and last 10 s (a growing backlog would show there) and the server's
resident memory (gunicorn master + worker) at start and end. The clients run on the same
2-core machine as the server, so they take CPU from it: the numbers are a lower bound.

``--servers N...`` runs N servers (default worker) behind nginx (``deploy/nginx.conf`` via
``bench/nginx.py``, listening without TLS: see there; nginx and redis-server must be
installed), each N with and without a Redis started here (``--redis``), so the cost of the
message queue and of the proxy shows in one run. The servers share the same cores, so two
servers on one machine show the overhead of the setup, not the gain of a second machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import socketio
import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.frames import compose_frames  # noqa: E402
from bench.ports import free_port  # noqa: E402
from webapp.config import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent



def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


# The server configurations compared: the default (threading with the guarded worker,
# webapp/worker.py), gunicorn's stock gthread worker it replaced, and the green-thread workers.
WORKERS = {"guarded": ("threading", {}),
           "gthread": ("threading", {"MASKWATCH_GUARD_CONNECTIONS": "false"}),
           "gevent": ("gevent", {}), "eventlet": ("eventlet", {})}


def start_server(worker: str, args: tuple[str, ...] = ()) -> subprocess.Popen:
    port = free_port()
    mode, env = WORKERS[worker]
    proc = subprocess.Popen([sys.executable, "-m", "webapp.cli", "serve", "--port", str(port), "--async-mode", mode,
                             *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **env})
    proc.url = f"http://127.0.0.1:{port}"
    proc.port = port
    return proc


def wait_ready(url: str, what: str, procs: list[subprocess.Popen]) -> None:
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=1, verify=False).ok:
                return
        except requests.RequestException:
            time.sleep(0.3)
    for proc in procs:
        proc.kill()
    raise SystemExit(f"{what} did not start")


@contextlib.contextmanager
def setup(worker: str, servers: int | None, redis: bool, workdir: Path):
    """The server(s) under test: (URL for the cameras, processes whose memory is measured)."""
    if servers is None:
        proc = start_server(worker)
        try:
            wait_ready(proc.url, worker, [proc])
            yield proc.url, [proc]
        finally:
            stop(proc)
        return
    from bench.nginx import Nginx
    helpers: list[subprocess.Popen] = []
    args: tuple[str, ...] = ("--max-client-connections", "0")
    if redis:
        port = free_port()
        helpers.append(subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        args += ("--redis", f"redis://127.0.0.1:{port}/0")
    procs = [start_server(worker, args + ("--server-name", f"bench-{i}")) for i in range(servers)]
    nginx = None
    try:
        for proc in procs:
            wait_ready(proc.url, "server", procs + helpers)
        subprocess.run([sys.executable, "-m", "webapp.cli", "gen-cert", "--out", str(workdir)], check=True,
                       capture_output=True, cwd=ROOT)
        nginx = Nginx(workdir / "nginx", [p.port for p in procs], workdir / "maskwatch-cert.pem",
                      workdir / "maskwatch-key.pem", balance="least_conn", tls=False)
        wait_ready(nginx.url, "nginx", procs + helpers)
        yield nginx.url, procs
    finally:
        if nginx is not None:
            nginx.stop()
        for proc in procs + helpers:
            stop(proc)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)  # gunicorn's graceful stop (15 s) plus the worker's own
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def camera(url: str, frames: list[bytes], seconds: float, results: list, start_at: float) -> None:
    sio = socketio.Client(reconnection=False, ssl_verify=False)  # nginx: our self-signed certificate
    answered = threading.Event()
    sio.on("detections", lambda _msg: answered.set())
    sio.on("frame_error", lambda _msg: answered.set())
    sio.connect(url, transports=["websocket"], wait_timeout=10)
    while time.time() < start_at:
        time.sleep(0.005)
    end = start_at + seconds
    seq = 0
    while time.time() < end:
        answered.clear()
        sent = time.time()
        sio.emit("frame", {"seq": seq, "image": frames[seq % len(frames)], "camera": "load"})
        if not answered.wait(10):
            break
        results.append((sent - start_at, (time.time() - sent) * 1000))
        seq += 1
    sio.disconnect()


def run(url: str, n: int, frames: list[bytes], seconds: float) -> list[list[tuple[float, float]]]:
    per_client: list[list] = [[] for _ in range(n)]
    start_at = time.time() + 2.0
    threads = [threading.Thread(target=camera, args=(url, frames, seconds, per_client[i], start_at))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per_client


def summarise(label: str, n: int, per_client: list[list[tuple[float, float]]], seconds: float,
              rss_start: float, rss_end: float) -> dict:
    flat = [r for c in per_client for r in c]
    rtts = np.array([r for _, r in flat] or [float("nan")])
    first = np.array([r for t, r in flat if t < 10])
    last = np.array([r for t, r in flat if t >= seconds - 10])
    return {
        "worker": label, "clients": n,
        "fps_client": np.mean([len(c) / seconds for c in per_client]),
        "fps_total": len(flat) / seconds,
        "p50": np.percentile(rtts, 50), "p95": np.percentile(rtts, 95),
        "first10": np.percentile(first, 50) if first.size else float("nan"),
        "last10": np.percentile(last, 50) if last.size else float("nan"),
        "rss_start": rss_start, "rss_end": rss_end,
        "windows": [np.percentile([r for t, r in flat if w <= t < w + 10] or [np.nan], 50)
                    for w in range(0, int(seconds), 10)],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--worker", nargs="+", default=["guarded"], choices=WORKERS)
    p.add_argument("--servers", type=int, nargs="+", help="servers behind nginx (e.g. 1 2)")
    p.add_argument("--redis", nargs="+", default=["off", "on"], choices=("off", "on"),
                   help="with --servers: without and/or with a Redis message queue")
    args = p.parse_args(argv)
    urllib3.disable_warnings()  # our own self-signed certificate in front of the servers
    settings = Settings.load()
    frames = [f for n in (1, 2, 3) for f in compose_frames(settings.data_dir, n, 4, seed=11)]
    setups = [(w, None, False) for w in args.worker] if not args.servers else \
        [(args.worker[0], n, redis == "on") for n in args.servers for redis in args.redis]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (worker, servers, redis) in enumerate(setups):
            label = worker if servers is None else \
                f"{servers} server{'s' * (servers > 1)} + nginx{' + Redis' if redis else ''}"
            with setup(worker, servers, redis, Path(tmp) / str(k)) as (url, procs):
                run(url, 1, frames, 3)  # warm-up
                for n in args.clients:
                    rss_start = sum(rss_mb(p.pid) for p in procs)
                    per_client = run(url, n, frames, args.seconds)
                    rows.append(summarise(label, n, per_client, args.seconds, rss_start,
                                          sum(rss_mb(p.pid) for p in procs)))
                    print(f"done: {label} x{n}", file=sys.stderr, flush=True)
    print(f"{args.seconds:.0f} s per row, 640x480 JPEG frames with 1-3 faces, {os.cpu_count()} cores "
          "(clients on the same machine)")
    print("| worker | cameras | fps / camera | frames/s total | rtt p50 ms | rtt p95 ms | p50 first 10 s | "
          "p50 last 10 s | server RSS start → end MB | p50 per 10 s window |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['worker']} | {r['clients']} | {r['fps_client']:.1f} | {r['fps_total']:.1f} | {r['p50']:.1f} | "
              f"{r['p95']:.1f} | {r['first10']:.1f} | {r['last10']:.1f} | {r['rss_start']:.0f} → {r['rss_end']:.0f} | "
              + " / ".join(f"{w:.0f}" for w in r["windows"]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
