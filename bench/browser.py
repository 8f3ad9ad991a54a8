"""The camera page in a real browser: frames per second and round trip with the page in front,
and with another tab (the dashboard) in front of it, against a Python camera client in the
same run.

    python bench/browser.py [--video CLIP.y4m|CLIP.mjpeg] [--seconds 15] [--fps 25]

A ``maskwatch serve`` on a free loopback port answers; Debian's Chromium (headless, driven by
Playwright) plays the clip as its fake webcam (by default a 640x480 clip panned and zoomed
over dataset faces at 25 fps, built at run time and never stored). Prints one table: fps and
round-trip p50 / p95 per setting, and the page's own main-thread cost per frame (Performance
measures around capture and drawing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.frames import compose_frames, panning_clip, write_y4m  # noqa: E402
from bench.ports import free_port  # noqa: E402
from webapp.config import Settings  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def start_server(port: int, history: Path) -> subprocess.Popen:
    env = {**os.environ, "MASKWATCH_HISTORY_PATH": str(history)}
    proc = subprocess.Popen([sys.executable, "-m", "webapp.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import requests
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return proc
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def measure_page(page, seconds: float) -> dict:
    """fps, round trips and per-frame page cost over ``seconds`` of streaming."""
    before = page.evaluate("[window.maskwatch.framesAnswered, window.maskwatch.cameraFrames, performance.now()]")
    time.sleep(seconds)  # a benchmark's measuring window, not synchronisation
    after = page.evaluate("[window.maskwatch.framesAnswered, window.maskwatch.cameraFrames, performance.now()]")
    answered = after[0] - before[0]
    rtts = page.evaluate(f"window.maskwatch.rtts.slice(-{max(answered, 1)})") if answered else []
    cost = page.evaluate("""() => {
        const sum = (n) => performance.getEntriesByName(n).map((e) => e.duration);
        const d = sum('maskwatch-draw'), c = sum('maskwatch-capture');
        const k = Math.min(d.length, c.length);
        return d.slice(-k).map((v, i) => v + c[c.length - k + i]); }""")
    seconds_measured = (after[2] - before[2]) / 1000
    return {"fps": answered / seconds_measured, "camera_fps": (after[1] - before[1]) / seconds_measured,
            "rtts": rtts, "cost": cost, "hidden": page.evaluate("document.visibilityState")}


def python_baseline(url: str, frames: list[bytes], seconds: float) -> dict:
    """The same frames from a python-socketio client, one in flight: the server side alone."""
    import socketio
    client = socketio.Client(reconnection=False)
    answers: list[float] = []
    client.on("detections", lambda msg: answers.append(time.perf_counter()))
    client.connect(url, transports=["websocket"], auth={"camera": "python baseline"}, wait_timeout=10)
    rtts, deadline, i = [], time.monotonic() + seconds, 0
    started = time.monotonic()
    while time.monotonic() < deadline:
        n = len(answers)
        sent = time.perf_counter()
        client.emit("frame", {"seq": i, "image": frames[i % len(frames)]})
        while len(answers) == n:
            time.sleep(0.001)  # waiting for this frame's answer (benchmark loop)
        rtts.append((answers[-1] - sent) * 1000)
        i += 1
    client.disconnect()
    return {"fps": i / (time.monotonic() - started), "camera_fps": None, "rtts": rtts, "cost": [], "hidden": ""}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", type=Path, help="a .y4m or .mjpeg clip for the fake webcam (default: built)")
    p.add_argument("--seconds", type=float, default=15.0, help="measuring window per setting")
    p.add_argument("--fps", type=int, default=25, help="frame rate of the built clip")
    args = p.parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    data_dir = Settings.load().data_dir
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = args.video
        if video is None:
            video = tmp / "clip.y4m"
            write_y4m(video, panning_clip(data_dir, seconds=4.0, fps=args.fps), fps=args.fps)
        port = free_port()
        server = start_server(port, tmp / "h.db")
        url = f"http://localhost:{port}"
        rows = {}
        try:
            rows["Python client (server alone)"] = python_baseline(
                url, compose_frames(data_dir, 3, 20, seed=5), args.seconds)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=FLAGS + [f"--use-file-for-fake-video-capture={video}"])
                context = browser.new_context(viewport={"width": 1100, "height": 900})
                page = context.new_page()
                page.goto(url + "/")
                page.click("#start")
                page.wait_for_function("() => window.maskwatch.framesAnswered >= 20", timeout=60_000)
                rows["camera page in front"] = measure_page(page, args.seconds)
                blank = context.new_page()
                blank.bring_to_front()
                rows["camera page behind a blank tab"] = measure_page(page, args.seconds)
                other = context.new_page()
                other.goto(url + "/dashboard")
                other.bring_to_front()
                rows["camera page behind the dashboard tab"] = measure_page(page, args.seconds)
                rows["capture path"] = page.evaluate("window.maskwatch.capture")
                browser.close()
        finally:
            server.terminate()
            server.wait(15)
    capture = rows.pop("capture path")
    clip = video.name if args.video else f"built, {args.fps} fps"
    print(f"camera page in headless Chromium, {args.seconds:.0f} s per row, clip {clip}, "
          f"capture path: {capture}; cpu cores: {os.cpu_count()}")
    print("| setting | visibility | camera frames read / s | frames answered / s | round trip p50 ms | p95 ms | "
          "page cost per frame p50 / p95 ms |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        rt = np.array(r["rtts"]) if r["rtts"] else np.array([np.nan])
        cost = (f"{np.median(r['cost']):.1f} / {np.percentile(r['cost'], 95):.1f}" if r["cost"] else "–")
        read = "–" if r["camera_fps"] is None else f"{r['camera_fps']:.1f}"
        print(f"| {name} | {r['hidden'] or '–'} | {read} | {r['fps']:.1f} | {np.nanmedian(rt):.0f} | "
              f"{np.nanpercentile(rt, 95):.0f} | {cost} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
