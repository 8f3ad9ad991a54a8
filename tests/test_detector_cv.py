"""Cross-validation of the face detector: folds, pooled out-of-fold threshold, training with --cv."""

from __future__ import annotations

import json

import pytest

from training import detector_cv
from webapp.vision.trained_detector import TrainedDetector


def test_folds_split_the_training_images_by_group_and_never_touch_validation(data_dir):
    from training.datasets import KAGGLE, load_dataset, split_by_image
    from training.train_detector import SPLIT_SEED, VAL_FRACTION, detector_splits

    train, val = split_by_image(load_dataset(KAGGLE, data_dir), VAL_FRACTION, SPLIT_SEED)
    held_out = []
    for k in range(5):
        fit, held, _ = detector_splits(data_dir, fold=(k, 5))
        assert {s.path for s in fit}.isdisjoint(s.path for s in held)
        assert {s.group for s in fit}.isdisjoint(s.group for s in held)  # near-duplicates on one side
        assert len(fit) + len(held) == len(train)
        held_out.append({s.path for s in held})
    assert set().union(*held_out) == {s.path for s in train}  # every training image held out once ...
    assert sum(map(len, held_out)) == len(train)
    assert set().union(*held_out).isdisjoint(s.path for s in val)  # ... and no validation image ever


def face(box, label="with_mask"):
    return [*box, label]


def detection(box, score):
    return [*box, score]


def write_cv(folder, folds: dict[int, list[dict]], n_folds: int = 2):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"folds": n_folds, "side": 512, "flags": ["--steps", "4"]}))
    for k, rows in folds.items():
        (folder / f"fold{k}").mkdir()
        (folder / f"fold{k}" / detector_cv.OOF_FILE).write_text(json.dumps(rows))
    return folder


FOLDS = {
    0: [{"image": "a.jpg", "truth": [face((0, 0, 40, 40))],
         "detections": [detection((0, 0, 40, 40), 0.9), detection((100, 100, 140, 140), 0.5)]},  # a false box
        {"image": "b.jpg", "truth": [face((50, 50, 90, 90), "without_mask")],
         "detections": [detection((50, 50, 90, 90), 0.4)]}],
    1: [{"image": "c.jpg", "truth": [face((0, 0, 40, 40), "mask_incorrect")],
         "detections": [detection((0, 0, 40, 40), 0.7), detection((60, 0, 100, 40), 0.3)]}],
}


def test_the_threshold_is_the_tune_rule_on_the_pooled_out_of_fold_detections(tmp_path):
    s = detector_cv.summarise(write_cv(tmp_path / "cv", FOLDS))
    assert s["folds_done"] == [0, 1] and (s["images"], s["faces"]) == (3, 3)
    # the false 0.5 box keeps precision under 0.93 until the threshold passes it
    point = s["operating_point"]
    assert point["threshold"] == 0.55
    assert {k: f["found"] for k, f in point["per_fold"].items()} == {0: 1, 1: 1}
    assert point["pooled"]["precision"] == 1.0 and point["pooled"]["recall_all"] == pytest.approx(2 / 3)
    assert point["pooled"]["recall_min32"]["without_mask"] == 0.0
    shipped = s["shipped_threshold"]  # the shipped 0.45 keeps the false 0.5 box
    assert shipped["threshold"] == 0.45 and shipped["per_fold"][0]["precision"] == 0.5
    text = detector_cv.format_summary("cv", s)
    assert "operating point 0.55" in text and "0: 1/2" in text
    assert point["misses"]["by_size"][">=32px"] == {"score": 1, "box": 0, "unseen": 0}  # b.jpg's 0.4 look
    assert "faces missed by cause (score / box / unseen): <16px 0 / 0 / 0, 16-31px 0 / 0 / 0, >=32px 1 / 0 / 0" in text


@pytest.mark.parametrize("looks, cause", [
    ([], "unseen"),
    ([detection((200, 200, 240, 240), 0.9)], "unseen"),  # a confident box elsewhere
    ([detection((0, 0, 40, 40), 0.3)], "score"),  # right place, too weak
    ([detection((0, 0, 40, 40), 0.3), detection((20, 0, 60, 40), 0.9)], "score"),  # weak right box wins
    ([detection((20, 0, 60, 40), 0.9)], "box"),  # confident but shifted: IoU 1/3
    ([detection((20, 0, 60, 40), 0.3)], "unseen"),  # shifted and weak
])
def test_a_missed_face_is_put_down_to_its_score_its_box_or_nothing(looks, cause):
    rows = [{"image": "a.jpg", "truth": [face((0, 0, 40, 40), "mask_incorrect"), face((100, 0, 110, 10))],
             "detections": [detection((100, 0, 110, 10), 0.8), *looks]}]
    misses = detector_cv.miss_causes(rows, 0.5)
    assert misses["by_size"][">=32px"] == {c: int(c == cause) for c in detector_cv.MISS_CAUSES}
    assert sum(misses["by_size"]["<16px"].values()) == 0  # the small face is found
    (large,) = misses["large"]
    assert (large["image"], large["label"], large["cause"]) == ("a.jpg", "mask_incorrect", cause)
    assert large["best_score"] == (0.3 if cause == "score" else 0.0)


def test_two_runs_are_compared_fold_by_fold(tmp_path):
    better = {k: [dict(r, detections=[[*d[:4], max(d[4], 0.46)] if d[4] == 0.4 else d for d in r["detections"]])
                  for r in rows] for k, rows in FOLDS.items()}
    a = detector_cv.summarise(write_cv(tmp_path / "a", FOLDS))
    b = detector_cv.summarise(write_cv(tmp_path / "b", better))
    assert "[1, 0]" in detector_cv.compare(a, b) and "sum +1" in detector_cv.compare(a, b)


def test_training_on_a_cross_validation_needs_every_fold_and_the_same_recipe(tmp_path):
    from training.train_detector import parse_args, recipe_differences

    unfinished = write_cv(tmp_path / "cv", {0: FOLDS[0]}, n_folds=2)
    with pytest.raises(SystemExit, match=r"folds \[1\] have not finished"):
        detector_cv.finished_summary(unfinished)
    assert recipe_differences(parse_args(["--steps", "4"]), ["--steps", "4", "--data", "x"]) == []
    assert recipe_differences(parse_args(["--steps", "5"]), ["--steps", "4"]) == ["--steps 5 (cross-validation: 4)"]
    with pytest.raises(SystemExit):
        parse_args(["--cv", str(unfinished), "--folds", "5"])


@pytest.mark.slow
def test_tiny_cross_validation_then_a_detector_on_every_training_image(data_dir, tmp_path):
    from training import train_detector

    recipe = ["--data", str(data_dir), "--limit-images", "6", "--batch-size", "2", "--crop", "128", "--steps", "2"]
    assert detector_cv.main(["--name", "tiny", "--root", str(tmp_path), "--folds", "2", "--", *recipe]) == 0
    folder = tmp_path / "tiny"
    summary = json.loads((folder / detector_cv.CV_FILE).read_text())
    assert summary["folds_done"] == [0, 1]
    assert all((folder / f"fold{k}" / "model" / "face_detector.tflite").is_file() for k in (0, 1))

    # a serving variant read on the same fold detectors: same images, the thorough pass at 640 px
    assert detector_cv.main(["--name", "tiny-640", "--root", str(tmp_path), "--models", str(folder),
                             "--side", "640"]) == 0
    reread = json.loads((tmp_path / "tiny-640" / detector_cv.CV_FILE).read_text())
    assert reread["config"] == {**summary["config"], "side": 640, "models": str(folder)}
    assert (reread["images"], reread["faces"]) == (summary["images"], summary["faces"])
    assert detector_cv.cv_command(tmp_path / "tiny-640", reread["config"]).endswith(
        f" then python -m training.detector_cv --name tiny-640 --models {folder} --side 640 --root {tmp_path}")
    with pytest.raises(SystemExit):  # a re-read trains nothing, so it takes no training flags
        detector_cv.main(["--name", "x", "--root", str(tmp_path), "--models", str(folder), "--", "--steps", "3"])

    out = tmp_path / "model"
    common = ["--cv", str(folder), "--out", str(out), "--work", str(tmp_path / "work")]
    with pytest.raises(SystemExit, match="another recipe"):
        train_detector.main([*common, *recipe[:-1], "3"])
    assert train_detector.main([*common, *recipe]) == 0
    metrics = json.loads((out / "detector_metrics.json").read_text())
    assert metrics["run"]["cv"] == str(folder)
    assert metrics["run"]["fit_images"] == 6 + 1  # the fit and the tune images of --limit-images 6
    detector = TrainedDetector(out)
    assert detector.threshold == summary["operating_point"]["threshold"] and detector.still_mirror
    card = (out / "MODEL_CARD.md").read_text()
    assert "cross-validated" in card and "fold trainings before it took" in card
    # the card names the cross-validation's command first and lists its out-of-fold readings
    assert f"`python -m training.detector_cv --name tiny --folds 2 --side 512 --root {tmp_path} -- " in card
    assert "Out of fold" in card and f"| {detector.threshold:.2f} ← chosen |" in card
    with pytest.raises(SystemExit, match="train it again with --cv"):
        train_detector.main(["--data", str(data_dir), "--out", str(out), "--retune"])

    # a new fit of the recipe takes the operating point its detector_metrics.json recorded (no folds)
    again = tmp_path / "again"
    recorded = ["--cv", str(out / "detector_metrics.json"), "--out", str(again), "--work", str(tmp_path / "work2")]
    with pytest.raises(SystemExit, match="another recipe"):
        train_detector.main([*recorded, *recipe[:-1], "3"])
    assert train_detector.main([*recorded, *recipe]) == 0
    tuning, again_tuning = (json.loads((d / "detector_metrics.json").read_text())["tuning"] for d in (out, again))
    assert again_tuning["cv"] == tuning["cv"] and again_tuning["curve"] == tuning["curve"]
    assert TrainedDetector(again).contract == detector.contract
    assert f"`python -m training.detector_cv --name tiny --folds 2 --side 512 --root {tmp_path} -- " in (
        again / "MODEL_CARD.md").read_text()


def test_the_default_operating_point_is_the_shipped_detectors_cross_validation(tmp_path):
    from training.detector_report import METRICS_FILE
    from training.train_detector import parse_args, recorded_cross_validation
    from webapp.config import Settings

    assert parse_args([]).cv == Settings().model_dir / METRICS_FILE
    assert parse_args(["--tune-split"]).cv is None and parse_args(["--folds", "4"]).cv is None
    with pytest.raises(SystemExit):
        parse_args(["--tune-split", "--cv", "x"])
    shipped = recorded_cross_validation(Settings().model_dir / METRICS_FILE)
    assert shipped["tuning"]["cv"]["command"].startswith("python -m training.detector_cv ")
    for text, why in (("{", "cannot read"), (json.dumps({"run": {}, "tuning": {}}), "no cross-validation")):
        (tmp_path / "m.json").write_text(text)
        with pytest.raises(SystemExit, match=why):
            recorded_cross_validation(tmp_path / "m.json")
    with pytest.raises(SystemExit, match="cannot read"):
        recorded_cross_validation(tmp_path / "missing.json")
