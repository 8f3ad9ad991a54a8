"""Faces the classifier is unsure of are never counted (drawing them grey: test_browser.py).

``unsure_model`` (conftest) is a copy of the shipped model whose unsure threshold is above any
probability, so every face is unsure whichever real faces happen to score low.
"""

import sqlite3

import numpy as np
import requests

from bench.frames import compose_frames
from tests.helpers import Camera, LiveServer, answer, poll
from webapp.vision.classifier import MaskClassifier


def test_classifier_flags_scores_below_the_threshold(model_dir, unsure_model):
    shipped, unsure = MaskClassifier(model_dir), MaskClassifier(unsure_model)
    rng = np.random.default_rng(0)
    crops = {s: rng.uniform(-1, 1, (4, s, s, 3)).astype(np.float32) for s in shipped.input_sizes}
    threshold = shipped.unsure_below
    assert [p.unsure for p in shipped.classify(crops)] == [p.score < threshold for p in shipped.classify(crops)]
    assert all(p.unsure for p in unsure.classify(crops))
    # Same decisions and scores: the threshold only flags.
    assert [p.label for p in unsure.classify(crops)] == [p.label for p in shipped.classify(crops)]


def test_unsure_faces_never_change_counts_compliance_or_alerts(unsure_model, data_dir, tmp_path):
    server = LiveServer(env={"MASKWATCH_MODEL": str(unsure_model), "MASKWATCH_WORKERS": "1",
                             "MASKWATCH_HISTORY_PATH": str(tmp_path / "h.db")}).wait_ready()
    try:
        before = requests.get(server.url + "/api/stats", timeout=5).json()
        cam = Camera(server.url, "unsure door")
        alerts = []
        cam.sio.on("alert", alerts.append)
        faces = []
        for seq, frame in enumerate(compose_frames(data_dir, 2, 10, seed=3)):
            kind, msg = answer(cam, {"seq": seq, "image": frame})
            assert kind == "detections"
            faces += msg["faces"]
            stats = requests.get(server.url + "/api/stats", timeout=5).json()
            assert sum(stats["in_view"].values()) == 0  # unsure faces are not "in view" per class
        assert len(faces) >= 10 and all(f["unsure"] for f in faces)
        cam.close()  # ends every track: people still in view would be counted now
        stats = poll(lambda: requests.get(server.url + "/api/stats", timeout=5).json(), lambda s: not s["cameras"])
        assert not stats["cameras"]
        assert stats["people"] == before["people"] and stats["compliance"] == before["compliance"]
        assert alerts == []
    finally:
        server.stop()  # a graceful stop writes whatever history is still buffered
    with sqlite3.connect(tmp_path / "h.db") as db:
        assert db.execute("SELECT COUNT(*) FROM counts").fetchone()[0] == 0
