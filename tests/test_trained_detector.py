"""The shipped face detector we trained (webapp/vision/trained_detector.py), on real held-out images."""

import json
import shutil

import numpy as np
import pytest

from training.datasets import KAGGLE, load_dataset, read_rgb, split_by_image
from training.detection_metrics import RECALL_IOU
from webapp.config import Settings
from webapp.vision.boxes import Detection, iou_matrix
from webapp.vision.detector import DetectorUnavailable, create_detector
from webapp.vision.trained_detector import DETECTOR_CONTRACT, DETECTOR_FILE, TrainedDetector, passes_threshold


@pytest.fixture(scope="module")
def detector(model_dir):
    return TrainedDetector(model_dir)


def test_it_is_the_default_detector():
    assert Settings().detector == "trained"


def test_contract_matches_the_model(model_dir, detector):
    contract = json.loads((model_dir / DETECTOR_CONTRACT).read_text())
    assert 0 < contract["threshold"] < 1 and contract["stride"] == 4 and contract["divisor"] == 32
    assert contract["live_side"] <= contract["still_side"]
    assert detector.threshold == contract["threshold"]


@pytest.mark.parametrize("side, score, kept", [
    (31.9, 0.44, False), (31.9, 0.45, True),  # a small face needs the threshold
    (32.0, 0.39, False), (32.0, 0.40, True),  # a large one (shorter side >= 32 px) the large-face one
])
def test_faces_of_each_size_pass_their_own_threshold(side, score, kept):
    wide = Detection((10.0, 20.0, 10.0 + 3 * side, 20.0 + side), score)  # the shorter side decides
    assert passes_threshold(wide, 0.45, 0.40, 32.0) is kept


@pytest.mark.parametrize("written, given, expected", [
    ({}, {}, (0.45, 0.45)),  # a contract from before the large-face threshold: one for all sizes
    ({"threshold_large": 0.4}, {}, (0.45, 0.4)),
    ({"threshold_large": 0.4}, {"threshold": 0.6}, (0.6, 0.6)),  # a threshold given alone: all sizes
    ({"threshold_large": 0.4}, {"threshold": 0.6, "threshold_large": 0.3}, (0.6, 0.3)),
])
def test_thresholds_from_the_contract_or_the_caller(model_dir, tmp_path, written, given, expected):
    for name in (DETECTOR_FILE, DETECTOR_CONTRACT):
        shutil.copy(model_dir / name, tmp_path / name)
    contract = {k: v for k, v in json.loads((model_dir / DETECTOR_CONTRACT).read_text()).items()
                if k != "threshold_large"}
    (tmp_path / DETECTOR_CONTRACT).write_text(json.dumps({**contract, "threshold": 0.45, **written}))
    detector = TrainedDetector(tmp_path, **given)
    assert (detector.threshold, detector.threshold_large) == pytest.approx(expected)


def test_missing_model_files_are_a_clear_error(tmp_path):
    with pytest.raises(DetectorUnavailable, match="train_detector"):
        create_detector("trained", model_dir=tmp_path)
    with pytest.raises(ValueError, match="model folder"):
        create_detector("trained")


@pytest.mark.parametrize("shape", [(480, 640, 3), (720, 1280, 3), (300, 200, 3), (17, 900, 3)])
def test_any_frame_shape_and_no_faces_on_a_blank_frame(detector, shape):
    for tiles in (True, False):
        assert detector.detect(np.full(shape, 128, np.uint8), tiles=tiles) == []


def test_no_box_on_hands_or_bodies_in_maksssksksss2(detector, data_dir):
    """A validation image (never trained on) where the BlazeFace ensemble boxed a woman's hands
    holding a phone: every box must be one of the four annotated faces, each found once."""
    samples = load_dataset(KAGGLE, data_dir)
    _, val = split_by_image(samples, 0.25, 1234)
    sample = next(s for s in val if s.path.stem == "maksssksksss2")
    found = detector.detect(read_rgb(sample.path))
    truth = np.array([f.box for f in sample.faces], np.float32)
    boxes = np.array([d.box for d in found], np.float32).reshape(-1, 4)
    overlap = iou_matrix(boxes, truth)
    assert len(boxes) == len(truth) == 4
    assert (overlap.max(1) >= RECALL_IOU).all(), "a box that is not on a face"
    assert sorted(overlap.argmax(1).tolist()) == [0, 1, 2, 3]
    hands = (325, 75, 385, 112)  # the right-hand woman's hands and phone, below her face
    assert not any(b[0] < hands[2] and b[2] > hands[0] and b[1] < hands[3] and b[3] > hands[1] for b in boxes)


def test_mirrored_thorough_pass_sees_a_mirrored_image_the_same_way(model_dir, data_dir):
    """Fusing the two looks is symmetric: the mirror image of a frame gives the mirrored boxes
    with the same scores, and ``detect`` keeps exactly the fused faces above the threshold."""
    detector = TrainedDetector(model_dir, still_mirror=True)
    _, val = split_by_image(load_dataset(KAGGLE, data_dir), 0.25, 1234)
    image = read_rgb(next(s for s in val if s.path.stem == "maksssksksss2").path)
    w = image.shape[1]
    fused = sorted(detector.mirrored_detections(image), key=lambda d: d.score)
    seen_mirrored = sorted(detector.mirrored_detections(np.ascontiguousarray(image[:, ::-1])), key=lambda d: d.score)
    assert len(fused) >= 4 and len(fused) == len(seen_mirrored)
    for d, m in zip(fused, seen_mirrored):
        assert m.score == pytest.approx(d.score, abs=1e-6)
        assert (w - m.box[2], m.box[1], w - m.box[0], m.box[3]) == pytest.approx(d.box, abs=1e-3)
    assert all(0.05 <= d.score <= 1 for d in fused)  # a face one look misses keeps half the floor there
    assert detector.detect(image) == [d for d in detector.mirrored_detections(image) if passes_threshold(
        d, detector.threshold, detector.threshold_large, detector.large_face)]
    one_look = TrainedDetector(model_dir, still_mirror=False)
    assert detector.detect(image, tiles=False) == one_look.detect(image, tiles=False)  # live: one look
