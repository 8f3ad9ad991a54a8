"""Real headless Chromium (Debian's) with a fake webcam playing dataset faces, driven by Playwright.

The y4m video is built at test time from dataset images (in the test's temporary folder);
screenshots are saved there too. Nothing cut from a dataset goes into the repository.
"""

import subprocess
import sys
from pathlib import Path

from bench.frames import compose_frames, write_y4m
from tests.helpers import CHROMIUM, ROOT, Camera, LiveServer, answer

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def launch(p, video: Path):
    return p.chromium.launch(executable_path=CHROMIUM, headless=True,
                             args=FLAGS + [f"--use-file-for-fake-video-capture={video}"])


def test_camera_page_streams_and_dashboard_counts(browser, live_server, data_dir, tmp_path):
    stream_and_check(browser, live_server.url.replace("127.0.0.1", "localhost"), data_dir, tmp_path)


def test_camera_page_over_https(browser, data_dir, tmp_path):
    """Once over TLS with a certificate from `maskwatch gen-cert`, as at a real entrance."""
    subprocess.run([sys.executable, "-m", "webapp.cli", "gen-cert", "--out", str(tmp_path)], check=True,
                   capture_output=True, timeout=60, cwd=ROOT)
    server = LiveServer(["--certfile", str(tmp_path / "maskwatch-cert.pem"),
                         "--keyfile", str(tmp_path / "maskwatch-key.pem")], scheme="https",
                        env={"MASKWATCH_WORKERS": "2", "MASKWATCH_HISTORY_PATH": str(tmp_path / "h.db")})
    try:
        server.wait_ready(verify=str(tmp_path / "maskwatch-cert.pem"))
        stream_and_check(browser, server.url.replace("127.0.0.1", "localhost"), data_dir, tmp_path, https=True)
    finally:
        server.stop()


def stream_and_check(browser, url, data_dir, tmp_path, https=False, query=""):
    video = tmp_path / "faces.y4m"
    write_y4m(video, compose_frames(data_dir, 3, 6, seed=7), repeat=3)
    chromium = launch(browser, video)
    try:
        # The self-signed certificate is not in headless Chromium's store; a phone would trust it once.
        context = chromium.new_context(viewport={"width": 1100, "height": 900}, ignore_https_errors=https)
        camera = context.new_page()
        camera_errors = []
        camera.on("pageerror", lambda e: camera_errors.append(str(e)))
        camera.on("console", lambda m: m.type == "error" and camera_errors.append(m.text))
        camera.goto(url + "/" + query)
        assert camera.evaluate("window.isSecureContext")
        camera.fill("#camera-name", "browser test door")
        camera.click("#start")
        camera.wait_for_function("() => window.maskwatch.framesAnswered >= 5", timeout=60_000)
        camera.wait_for_function("() => window.maskwatch.boxesDrawn > 0", timeout=30_000)
        state = camera.evaluate("window.maskwatch")
        assert state["streaming"] and state["connected"] and state["errors"] == 0
        assert state["lastDetections"]["width"] == 640
        # Boxes really are on the overlay canvas: count painted pixels.
        painted = camera.evaluate("""() => {
            const c = document.getElementById('overlay');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n; }""")
        assert painted > 500
        assert camera.text_content("#hud-faces") not in ("", "–")
        camera.screenshot(path=str(tmp_path / "camera.png"))

        dashboard = context.new_page()
        dashboard.on("console", lambda m: m.type == "error" and camera_errors.append(m.text))
        dashboard.goto(url + "/dashboard")
        dashboard.wait_for_function(
            "() => window.maskwatchDashboard.lastCounts && "
            "Object.values(window.maskwatchDashboard.lastCounts.in_view).reduce((a, b) => a + b, 0) > 0",
            timeout=30_000)
        counts = dashboard.evaluate("window.maskwatchDashboard.lastCounts")
        assert any(c["name"] == "browser test door" for c in counts["cameras"])
        labels = ("with_mask", "mask_incorrect", "without_mask")
        total = sum(int(dashboard.text_content(f"#now-{lab}")) for lab in labels)
        assert total > 0
        dashboard.screenshot(path=str(tmp_path / "dashboard.png"))
        camera.click("#stop")
        assert not camera.evaluate("window.maskwatch.streaming")
        # Stop disconnects: the dashboard drops the camera at the next counts, not after a timeout.
        dashboard.wait_for_function("() => !window.maskwatchDashboard.lastCounts.cameras"
                                    ".some((c) => c.name === 'browser test door')", timeout=3_000)
        assert not camera_errors
    finally:
        chromium.close()
    print(f"screenshots: {tmp_path / 'camera.png'} {tmp_path / 'dashboard.png'}")
    assert (tmp_path / "camera.png").stat().st_size > 0 and (tmp_path / "dashboard.png").stat().st_size > 0


def test_insecure_origin_message(browser, live_server, tmp_path, data_dir):
    """Plain http under a LAN name: the browser refuses cameras, and the page says why."""
    video = tmp_path / "v.y4m"
    write_y4m(video, compose_frames(data_dir, 1, 1), repeat=1)
    chromium = browser.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=FLAGS + [f"--use-file-for-fake-video-capture={video}",
                      "--host-resolver-rules=MAP entrance.lan 127.0.0.1"])
    try:
        page = chromium.new_page()
        page.goto(f"http://entrance.lan:{live_server.port}/")
        assert page.evaluate("window.isSecureContext") is False
        assert "https" in page.text_content("#message")  # warned on load
        page.click("#start")
        message = page.text_content("#message")
        assert "secure" in message and "https://" in message and "localhost" in message
        assert not page.evaluate("window.maskwatch.streaming")
    finally:
        chromium.close()


def test_unsure_faces_are_drawn_grey(browser, unsure_model, data_dir, tmp_path):
    """With a model that is unsure of every face, the overlay holds grey boxes and no class colour."""
    server = LiveServer(env={"MASKWATCH_MODEL": str(unsure_model), "MASKWATCH_WORKERS": "1",
                             "MASKWATCH_HISTORY_PATH": str(tmp_path / "h.db")}).wait_ready()
    video = tmp_path / "faces.y4m"
    write_y4m(video, compose_frames(data_dir, 3, 4, seed=7), repeat=3)
    chromium = launch(browser, video)
    try:
        page = chromium.new_page(viewport={"width": 1100, "height": 900})
        page.goto(server.url.replace("127.0.0.1", "localhost") + "/")
        page.click("#start")
        page.wait_for_function("() => window.maskwatch.boxesDrawn > 0", timeout=60_000)
        assert all(f["unsure"] for f in page.evaluate("window.maskwatch.lastDetections.faces"))
        grey, coloured = page.evaluate("""() => {
            const c = document.getElementById('overlay');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let grey = 0, coloured = 0;
            for (let i = 0; i < d.length; i += 4) {
              if (d[i + 3] < 250) continue;  // anti-aliased edges blend with the transparent canvas
              const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
              if (Math.max(r, g, b) - Math.min(r, g, b) < 12 && r > 120) grey++;
              else if (Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured++;
            }
            return [grey, coloured]; }""")
        page.screenshot(path=str(tmp_path / "unsure.png"))
        assert grey > 300 and coloured == 0
    finally:
        chromium.close()
        server.stop()


def test_camera_page_on_a_phone_keeps_labels_readable(browser, live_server, data_dir, tmp_path):
    """A phone-sized page: the placeholder reads on one line, and box labels overlap neither each
    other nor the fps / round-trip HUD, and stay on the canvas."""
    video = tmp_path / "faces.y4m"
    write_y4m(video, compose_frames(data_dir, 3, 4, seed=11), repeat=3)
    chromium = launch(browser, video)
    try:
        page = chromium.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
        page.goto(live_server.url.replace("127.0.0.1", "localhost") + "/")
        assert page.evaluate("document.querySelector('#placeholder span').getClientRects().length") == 1
        page.click("#start")
        page.wait_for_function("() => window.maskwatch.boxesDrawn >= 2", timeout=60_000)
        state = page.evaluate("window.maskwatch")
        width, height = page.evaluate("[document.getElementById('overlay').clientWidth,"
                                      " document.getElementById('overlay').clientHeight]")
        boxes = state["labels"] + [state["hud"]]

        def overlap(a, b):
            return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                    and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])

        for i, a in enumerate(state["labels"]):
            assert 0 <= a["x"] and a["x"] + a["w"] <= width + 0.5 and 0 <= a["y"] and a["y"] + a["h"] <= height + 0.5
            assert not any(overlap(a, b) for b in boxes[i + 1:]), (a, boxes)
        page.screenshot(path=str(tmp_path / "phone.png"))
    finally:
        chromium.close()


def test_camera_page_holds_a_face_missing_from_an_answer_briefly(browser, live_server):
    """A far face is only in the answers of the detector's thorough pass (every 0.3 s): its box
    stays, dashed, until a newer answer has it or 450 ms pass; a face in the answer is drawn fresh."""
    chromium = browser.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
    try:
        page = chromium.new_page()
        page.goto(live_server.url + "/")
        shown = page.evaluate("""() => {
            const far = { box: [10, 10, 20, 20], label: "without_mask", score: 0.9, unsure: false, track: 1 };
            const near = { box: [100, 100, 200, 200], label: "with_mask", score: 0.9, unsure: false, track: 2 };
            const draw = (faces, now) => window.maskwatch.facesToDraw({ width: 640, height: 480, faces }, now)
                .map((f) => [f.face.track, f.held]);
            return [draw([far, near], 1000), draw([near], 1040), draw([near], 1400), draw([near], 1460),
                    draw([far, near], 1500)];
        }""")
        assert shown == [[[1, False], [2, False]], [[2, False], [1, True]], [[2, False], [1, True]],
                         [[2, False]], [[1, False], [2, False]]]
    finally:
        chromium.close()


def test_dashboard_shows_earlier_alerts_and_a_clean_chart(browser, data_dir, tmp_path):
    """A dashboard opened after an alert still lists it; with no camera the chart shows the last
    ten minutes in order rather than an empty, meaningless axis."""
    server = LiveServer(env={"MASKWATCH_WORKERS": "1", "MASKWATCH_HISTORY_PATH": str(tmp_path / "h.db")}).wait_ready()
    video = tmp_path / "v.y4m"
    write_y4m(video, compose_frames(data_dir, 1, 1), repeat=1)
    chromium = launch(browser, video)
    try:
        page = chromium.new_page()
        page.goto(server.url + "/dashboard")
        page.wait_for_function("() => window.maskwatchDashboard.lastCounts !== null", timeout=20_000)
        low, high = page.evaluate("window.maskwatchDashboard.chartRange")
        assert high - low == 10 * 60 * 1000 and abs(high - page.evaluate("Date.now()")) < 10_000
        page.close()

        cam = Camera(server.url, "front door")
        alerts = []
        cam.sio.on("alert", alerts.append)
        image = (data_dir / "kaggle-facemask" / "images" / "maksssksksss1.jpg").read_bytes()  # one unmasked face
        for i in range(6):
            assert answer(cam, {"seq": i, "image": image})[0] == "detections"
        assert alerts
        later = chromium.new_page()
        later.goto(server.url + "/dashboard")
        later.wait_for_function("() => document.querySelectorAll('#alerts li:not(.empty)').length >= 1", timeout=20_000)
        assert "front door" in later.text_content("#alerts")
        cam.close()
    finally:
        chromium.close()
        server.stop()
