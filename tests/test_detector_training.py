"""The trained face detector's training side: the BlazeFace rebuild, the crops and targets, a tiny run."""

import json
from pathlib import Path

import numpy as np
import pytest

from training.detector_data import CropSampler, Scene, grid_targets
from training.detector_report import STILL_PASSES, best_point, operating_point
from webapp.vision.trained_detector import DETECTOR_CONTRACT, DETECTOR_FILE, TrainedDetector


def test_rebuilt_blazeface_matches_litert():
    from training.blazeface_keras import FULL_RANGE_FILE, build_from_tflite, check_against_litert
    from webapp.vision.blazeface import blazeface_model_dir

    source = blazeface_model_dir() / FULL_RANGE_FILE
    model = build_from_tflite(source)
    assert check_against_litert(model, source) < 1e-4
    out = model(np.zeros((1, 96, 160, 3), np.float32))  # any size divisible by 32: a stride-4 grid
    assert tuple(out["score"].shape) == (1, 24, 40, 1) and tuple(out["box"].shape) == (1, 24, 40, 4)


def test_targets_mark_the_centre_positive_the_rest_of_the_face_ignored():
    score, box, weight = grid_targets(np.array([[40, 40, 80, 80]], np.float32), 128, 4)
    assert score.shape == (32, 32)
    ys, xs = np.nonzero(score == 1)
    centres = np.stack([(xs + 0.5) * 4, (ys + 0.5) * 4], 1)
    assert np.all(np.hypot(centres[:, 0] - 60, centres[:, 1] - 60) <= 10.0)  # 0.25 x 40 px
    assert score[12, 12] == -1 and score[0, 0] == 0  # inside the box off centre / background
    y, x = ys[0], xs[0]
    assert box[y, x, 0] == pytest.approx(60 - (x + 0.5) * 4) and box[y, x, 2:].tolist() == [40, 40]
    assert weight[y, x] == pytest.approx(1 / 40)


@pytest.mark.parametrize("face, why", [
    ((10, 10, 13, 13), "too small to see"),
    ((-30, 10, 10, 50), "mostly outside the crop"),
])
def test_faces_that_cannot_be_learnt_are_ignored_not_negative(face, why):
    score, _, _ = grid_targets(np.array([face], np.float32), 64, 4)
    assert not (score == 1).any(), why


def test_every_face_of_any_size_gets_a_positive_cell():
    rng = np.random.default_rng(0)
    for _ in range(200):
        side = rng.uniform(4, 200)
        x0, y0 = rng.uniform(0, 320 - side, 2)
        score, _, _ = grid_targets(np.array([[x0, y0, x0 + side, y0 + side]], np.float32), 320, 4)
        assert (score == 1).any()


def test_crops_keep_boxes_on_the_faces():
    """A synthetic scene: a bright square 'face' on black; after scaling, mosaic and pasting
    every box still surrounds bright pixels."""
    image = np.zeros((200, 300, 3), np.uint8)
    image[50:90, 100:140] = 255
    scene = Scene(image, np.array([[100, 50, 140, 90]], np.float32), "synthetic")
    sampler = CropSampler([scene], [scene], crop=128, serve_side=300, paste_prob=1.0)
    for seed in range(20):
        crop, boxes = sampler.sample(np.random.default_rng(seed))
        assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
        for x0, y0, x1, y1 in boxes:
            cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
            if 0 <= cx < 128 and 0 <= cy < 128:
                assert crop[cy, cx].mean() > 100  # photometric changes keep it far from black


def test_close_ups_pasted_larger_than_the_crop_teach_only_their_surroundings():
    """At the serving side a close-up's face is larger than a training crop: its face cells are
    ignored (not a face the crop can show whole) and the rest of the crop stays negative."""
    empty = Scene(np.full((200, 300, 3), 90, np.uint8), np.zeros((0, 4), np.float32), "synthetic")
    image = np.zeros((400, 400, 3), np.uint8)
    image[100:300, 100:300] = 255
    closeup = Scene(image, np.array([[100, 100, 300, 300]], np.float32), "synthetic")
    sampler = CropSampler([empty], [closeup], crop=128, serve_side=300, paste_prob=1.0,
                          closeup_face=(300.0, 300.0))
    for seed in range(10):
        _, boxes = sampler.sample(np.random.default_rng(seed))
        assert len(boxes) and (boxes[:, 2] - boxes[:, 0] >= 299).all()
        score, _, _ = grid_targets(boxes, 128, 4)
        assert not (score == 1).any()


def test_face_pictures_are_pasted_at_their_share_and_leave_other_recipes_unchanged():
    """``picture_share`` of the pastes come from the boxed pictures; without a share the sampler
    draws exactly the crops it drew before pictures existed (the shipped recipe reproduces)."""
    empty = Scene(np.full((200, 300, 3), 90, np.uint8), np.zeros((0, 4), np.float32), "synthetic")
    closeup, picture = (np.zeros((100, 100, 3), np.uint8) for _ in range(2))
    closeup[30:70, 30:70] = 255  # close-ups: a white face; pictures: a black face on white
    picture[:] = 255
    picture[30:70, 30:70] = 0
    face = np.array([[30, 30, 70, 70]], np.float32)
    closeups, pictures = [Scene(closeup, face, "close-up")], [Scene(picture, face, "picture")]

    def centre_colours(sampler: CropSampler, seeds: range) -> list[float]:
        found = []
        for seed in seeds:
            crop, boxes = sampler.sample(np.random.default_rng(seed))
            for x0, y0, x1, y1 in boxes:
                cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
                if 0 <= cx < 128 and 0 <= cy < 128:
                    found.append(float(crop[cy, cx].mean()))
        return found

    def sampler(**pictures_kw) -> CropSampler:
        return CropSampler([empty], closeups, crop=128, serve_side=300, paste_prob=1.0,
                           closeup_face=(20.0, 40.0), **pictures_kw)

    colours = centre_colours(sampler(pictures=pictures, picture_share=0.5), range(200))
    share = np.mean(np.array(colours) < 128)  # photometric changes keep the two far apart
    assert 0.35 < share < 0.65, share
    assert not any(c < 128 for c in centre_colours(sampler(pictures=pictures, picture_share=0.0), range(50)))
    for seed in range(10):
        plain, unused = (s.sample(np.random.default_rng(seed))
                         for s in (sampler(), sampler(pictures=pictures, picture_share=0.0)))
        assert np.array_equal(plain[0], unused[0]) and np.array_equal(plain[1], unused[1])


def test_region_blur_softens_part_of_some_crops_and_leaves_other_recipes_unchanged():
    rng = np.random.default_rng(0)
    scene = Scene(rng.integers(0, 256, (200, 300, 3)).astype(np.uint8), np.array([[100, 50, 140, 90]], np.float32),
                  "synthetic")

    def crops(region_blur: float) -> list[np.ndarray]:
        sampler = CropSampler([scene], [scene], crop=128, serve_side=300, region_blur=region_blur)
        return [sampler.sample(np.random.default_rng(seed))[0] for seed in range(20)]

    plain, unused, blurred = crops(0.0), crops(0.0), crops(1.0)
    assert all(np.array_equal(a, b) for a, b in zip(plain, unused))
    roughness = [float(np.abs(np.diff(c.astype(np.float32), axis=1)).mean()) for c in (*plain, *blurred)]
    assert np.mean(roughness[20:]) < np.mean(roughness[:20])  # noise is smoothed where it is blurred


@pytest.mark.slow
def test_face_pictures_get_one_face_box_from_the_teacher(data_dir):
    """chandrikadeb7 pictures (no boxes) come back boxed by MediaPipe's BlazeFace: one box each,
    inside the picture and a large share of it."""
    from training.train_detector import picture_closeups

    boxed = picture_closeups(data_dir, limit=40)  # the first 40 are masked: the teacher keeps fewer
    assert 5 <= len(boxed) <= 40
    for p in boxed:
        h, w = p.image.shape[:2]
        (x0, y0, x1, y1), = p.boxes
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert max(x1 - x0, y1 - y0) >= 0.3 * max(h, w)
        assert p.labels[0] in ("with_mask", "without_mask")


@pytest.mark.slow
def test_tiny_detector_training_run_exports_resumes_and_serves(data_dir, tmp_path):
    from training import train_detector

    out, work = tmp_path / "model", tmp_path / "work"
    common = ["--data", str(data_dir), "--out", str(out), "--work", str(work), "--limit-images", "8",
              "--batch-size", "2", "--crop", "128", "--checkpoint-every", "2"]
    common += ["--closeup-tune-fraction", "0.5"]  # the close-ups counted for the operating point are not pasted
    common += ["--picture-share", "0.5"]  # chandrikadeb7 pictures boxed by the teacher are pasted too
    common += ["--tune-split"]  # the operating point from the tune images, not a cross-validation
    assert train_detector.main(common + ["--steps", "2"]) == 0
    assert train_detector.main(common + ["--steps", "4", "--resume"]) == 0
    log = (work / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and log[-1].startswith("4,")
    for name in (DETECTOR_FILE, DETECTOR_CONTRACT, "detector_metrics.json", "detector_curves.png",
                 "detector_operating_point.png", "MODEL_CARD.md"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "detector_metrics.json").read_text())
    assert metrics["run"]["steps"] == 4 and metrics["tuning"]["curve"]
    assert metrics["tuning"]["closeups_trained_on"] is False  # boxes per close-up on held-out close-ups
    assert metrics["run"]["picture_share"] == 0.5 and metrics["run"]["picture_images"] >= 1
    detector = TrainedDetector(out)
    assert detector.threshold == metrics["tuning"]["threshold"]
    assert detector.threshold_large == metrics["tuning"]["threshold_large"]
    # a threshold pair only for a mirrored pass, judged on close-ups held out of training (as here)
    assert bool(metrics["tuning"]["size_thresholds"]) == detector.still_mirror
    assert detector.still_side == metrics["tuning"]["still_side"]
    assert detector.still_mirror == metrics["tuning"]["still_mirror"]
    assert [(p["still_side"], p["still_mirror"]) for p in metrics["tuning"]["sides"]] == list(STILL_PASSES)
    for tiles in (True, False):
        found = detector.detect(np.zeros((240, 320, 3), np.uint8), tiles=tiles)
        assert all(0 <= d.score <= 1 for d in found)
    assert "python -m training.train_detector" in (out / "MODEL_CARD.md").read_text()

    # choosing the operating point again keeps the training record and adds the command to it
    assert train_detector.main(common + ["--retune"]) == 0
    retuned = json.loads((out / "detector_metrics.json").read_text())
    assert retuned["run"]["commands"][:-1] == metrics["run"]["commands"]
    assert retuned["run"]["commands"][-1].endswith("--retune")
    assert retuned["run"]["train_seconds"] == metrics["run"]["train_seconds"]
    with pytest.raises(SystemExit, match="train one first"):
        train_detector.main(["--data", str(data_dir), "--out", str(tmp_path / "empty"), "--retune"])


def row(threshold: float, precision: float, recall: float) -> dict[str, float]:
    return {"threshold": threshold, "precision": precision, "recall": recall, "detections": 10}


@pytest.mark.parametrize("curves, closeups, side, threshold", [
    # the lowest threshold reaching the precision target, then the side with the best recall there
    ({512: [row(0.4, 0.90, 0.88), row(0.5, 0.95, 0.83)], 640: [row(0.4, 0.91, 0.90), row(0.5, 0.94, 0.86)]},
     {512: 1.0, 640: 1.0}, 640, 0.5),
    # ... unless it boxes close-ups more than once too often
    ({512: [row(0.5, 0.95, 0.83)], 640: [row(0.5, 0.94, 0.86)]}, {512: 1.03, 640: 1.06}, 512, 0.5),
    # equal recall: the smaller (cheaper) side
    ({512: [row(0.5, 0.95, 0.86)], 640: [row(0.5, 0.97, 0.86)]}, {512: 1.0, 640: 1.0}, 512, 0.5),
    # a larger side gaining less than SIDE_RECALL_SLACK does not pay for its pixels
    ({512: [row(0.5, 0.94, 0.843)], 640: [row(0.5, 0.94, 0.840)], 768: [row(0.55, 0.94, 0.846)]},
     {512: 1.0, 640: 1.0, 768: 1.0}, 512, 0.5),
    # a side that never reaches the precision target loses to one that does, whatever its recall
    ({512: [row(0.5, 0.94, 0.80)], 768: [row(0.5, 0.90, 0.95), row(0.6, 0.92, 0.90)]}, {512: 1.0, 768: 1.0},
     512, 0.5),
    # no side reaches it: the most precise point
    ({512: [row(0.5, 0.80, 0.9), row(0.7, 0.85, 0.7)], 640: [row(0.5, 0.70, 0.95)]}, {512: 1.0, 640: 1.0},
     512, 0.7),
    # (side, True): the pass also looks at the mirror image, twice the pixels of the side alone;
    # it wins where it gains more than the slack over every cheaper pass meeting the targets
    ({512: [row(0.5, 0.94, 0.843)], 640: [row(0.5, 0.94, 0.866)], 768: [row(0.55, 0.94, 0.845)],
      (512, True): [row(0.45, 0.934, 0.872)]}, {512: 1.04, 640: 1.054, 768: 1.04, (512, True): 1.03},
     (512, True), 0.45),
    # ... but not over a cheaper larger side within the slack
    ({512: [row(0.5, 0.94, 0.843)], 640: [row(0.5, 0.94, 0.866)], (512, True): [row(0.45, 0.934, 0.872)]},
     {512: 1.0, 640: 1.0, (512, True): 1.0}, 640, 0.5),
])
def test_operating_point_is_chosen_by_the_rule(curves, closeups, side, threshold):
    def thorough_pass(key):  # a bare side looks at the frame only
        return (key, False) if isinstance(key, int) else key

    points = [{"still_side": thorough_pass(k)[0], "still_mirror": thorough_pass(k)[1], **operating_point(c),
               "closeup_detections": closeups[k]} for k, c in curves.items()]
    chosen = best_point(points)
    assert ((chosen["still_side"], chosen["still_mirror"]), chosen["threshold"]) == (thorough_pass(side), threshold)


def test_threshold_matching_counts_a_second_box_on_one_face_as_false():
    from training.detector_report import _match
    from webapp.vision.boxes import iou_matrix

    truth = np.array([[0, 0, 10, 10], [50, 50, 70, 70]], np.float32)
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [100, 100, 120, 120], [52, 50, 72, 70]], np.float32)
    flags = _match(iou_matrix(boxes, truth), np.array([0.9, 0.8, 0.7, 0.6], np.float32))
    assert flags.tolist() == [True, False, False, True]


def pair(small: float, large: float, precision: float, recall: float, closeups: float = 1.0) -> dict[str, float]:
    return {"threshold": small, "threshold_large": large, "precision": precision, "recall": recall,
            "detections": 10, "closeup_detections": closeups}


@pytest.mark.parametrize("rows, chosen", [
    # the most recall within the precision target and the close-up bound
    ([pair(0.45, 0.45, 0.946, 0.869), pair(0.45, 0.40, 0.943, 0.875), pair(0.40, 0.40, 0.915, 0.880)], (0.45, 0.40)),
    # ... a pair boxing close-ups more than once too often is out
    ([pair(0.45, 0.45, 0.946, 0.869), pair(0.45, 0.40, 0.943, 0.875, closeups=1.06)], (0.45, 0.45)),
    # equal recall: the higher small-face, then the higher large-face threshold
    ([pair(0.45, 0.40, 0.94, 0.87), pair(0.50, 0.35, 0.95, 0.87), pair(0.50, 0.40, 0.95, 0.87)], (0.50, 0.40)),
    # none meets the targets: no pair (the single threshold's operating point stands)
    ([pair(0.45, 0.45, 0.90, 0.9)], None),
])
def test_size_thresholds_are_chosen_by_the_rule(rows, chosen):
    from training.detector_report import size_thresholds

    best = size_thresholds(rows)
    assert (None if best is None else (best["threshold"], best["threshold_large"])) == chosen


def _detector_run(tmp_path, name: str, minutes: float, steps: int = 4000, cv: tuple[str, str] | None = None) -> Path:
    """A folder with a detector_metrics.json as training.train_detector writes it (the parts a re-run reads);
    ``cv``: (its --cv, the command of the cross-validation that chose its operating point)."""
    folder = tmp_path / name
    folder.mkdir()
    tune = {"still_side": 512, "still_mirror": True, "threshold": 0.45, "precision": 0.95, "recall": 0.87,
            **({"cv": {"command": cv[1]}} if cv else {})}
    run = {"commands": [f"python -m training.train_detector --out {folder}"], "seed": 1234, "steps": steps,
           "train_seconds": minutes * 60, "other_seconds": 90.0, **({"cv": cv[0]} if cv else {})}
    (folder / "detector_metrics.json").write_text(json.dumps({"run": run, "tuning": tune}))
    return folder


def _evaluation(tmp_path, name: str, map50: float) -> Path:
    row = {"detector": "trained", "map50": map50, "map50_min32": 0.86, "precision": 0.94,
           "detections_per_image": 3.8, "ap50": {"mask_incorrect": 0.55}, "recall_min32": {"with_mask": 0.97}}
    path = tmp_path / name
    path.write_text(json.dumps({"command": "python -m training.evaluate --images $D/kaggle-facemask/images --split val",
                                "images": 168, "rows": [{"detector": "blazeface"}, row]}))
    return path


def test_a_rerun_of_the_detector_command_is_recorded_beside_the_shipped_run(tmp_path):
    from training.detector_rerun import record_rerun, rerun_lines

    model = _detector_run(tmp_path, "model", minutes=64)
    shipped_evals = [json.loads(_evaluation(model, "detector_eval_kaggle.json", 0.693).read_text())]

    def lines_of(folder):
        return rerun_lines(json.loads((folder / "detector_metrics.json").read_text()), shipped_evals)

    assert lines_of(model) == []  # no re-run recorded: no section
    rerun = _detector_run(tmp_path, "rerun", minutes=20)
    record_rerun(model, rerun, [_evaluation(tmp_path, "eval-rerun.json", 0.684)])
    record_rerun(model, rerun, [_evaluation(tmp_path, "eval-rerun.json", 0.684)])  # recording again replaces
    lines = lines_of(model)
    rows = [line for line in lines if line.startswith("| shipped") or line.startswith("| re-run")]
    assert len(rows) == 2
    assert "64 min" in rows[0] and "kaggle-facemask (168): 0.693" in rows[0]
    assert "20 min" in rows[1] and "kaggle-facemask (168): 0.684" in rows[1]
    assert rows[1].endswith("| – |")  # no detector files to compare
    for folder, weights in ((model, b"w"), (rerun, b"w")):
        (folder / "face_detector.tflite").write_bytes(weights)
    record_rerun(model, rerun, [])
    assert lines_of(model)[-2].endswith("| same bytes |")
    (rerun / "face_detector.tflite").write_bytes(b"other")
    record_rerun(model, rerun, [])
    assert lines_of(model)[-2].endswith("| differs |")


def test_a_rerun_of_another_recipe_is_refused(tmp_path):
    from training.detector_rerun import record_rerun

    model = _detector_run(tmp_path, "model", minutes=64)
    other = _detector_run(tmp_path, "other", minutes=30, steps=5000)
    with pytest.raises(ValueError, match="steps differ"):
        record_rerun(model, other, [])


def test_a_rerun_counts_when_the_same_cross_validation_chose_its_operating_point(tmp_path):
    from training.detector_rerun import record_rerun

    cv = "python -m training.detector_cv --name shipped-recipe --folds 4 --side 512"
    model = _detector_run(tmp_path, "model", minutes=21, cv=("runs/detector-cv/shipped-recipe", cv))
    # the default command reads the point from the shipped detector_metrics.json: the same cross-validation
    default = _detector_run(tmp_path, "default", minutes=21, cv=("model/detector_metrics.json", cv))
    assert record_rerun(model, default, [])["train_seconds"] == 21 * 60
    other = _detector_run(tmp_path, "other", minutes=21, cv=("runs/detector-cv/b", cv.replace("512", "640")))
    with pytest.raises(ValueError, match="the cross-validation that chose the operating point"):
        record_rerun(model, other, [])
