"""COCO AP@0.5 and detector recall on tiny fixtures whose answers are known exactly."""

import pytest

from training.detection_metrics import Predicted, Truth, coco_ap50, detector_recall

A = (10, 10, 50, 50)  # 40 px face
B = (100, 100, 120, 120)  # 20 px face
FAR = (300, 300, 340, 340)


def test_perfect_detections_give_ap_one():
    r = coco_ap50([[Truth(A, "with_mask")]], [[Predicted(A, "with_mask", 0.9)]])
    assert r["with_mask"] == pytest.approx(1.0)
    assert r["mask_incorrect"] is None and r["without_mask"] is None  # no ground truth
    assert r["map50"] == pytest.approx(1.0)


def test_false_positive_ranked_above_the_hit_halves_precision():
    truths = [[Truth(A, "with_mask")]]
    preds = [[Predicted(A, "with_mask", 0.5), Predicted(FAR, "with_mask", 0.9)]]
    assert coco_ap50(truths, preds)["with_mask"] == pytest.approx(0.5)
    preds = [[Predicted(A, "with_mask", 0.9), Predicted(FAR, "with_mask", 0.5)]]
    assert coco_ap50(truths, preds)["with_mask"] == pytest.approx(1.0)


def test_half_recall_and_wrong_label():
    truths = [[Truth(A, "with_mask"), Truth(B, "without_mask")],
              [Truth(A, "with_mask")]]
    preds = [[Predicted(A, "with_mask", 0.8), Predicted(B, "with_mask", 0.7)],  # B: wrong class
             []]
    r = coco_ap50(truths, preds)
    # with_mask: 2 true faces, one hit at precision 1, then a false positive: COCO's 101 recall
    # points 0.00..0.50 have precision 1, the rest 0 -> 51 / 101.
    assert r["with_mask"] == pytest.approx(51 / 101)
    assert r["without_mask"] == pytest.approx(0.0)
    assert r["map50"] == pytest.approx((51 / 101) / 2)


def test_min_side_ignores_small_faces():
    truths = [[Truth(A, "with_mask"), Truth(B, "with_mask")]]
    preds = [[Predicted(A, "with_mask", 0.9), Predicted(B, "with_mask", 0.95)]]
    assert coco_ap50(truths, preds)["with_mask"] == pytest.approx(1.0)
    only_big = [[Predicted(A, "with_mask", 0.9)]]
    assert coco_ap50(truths, only_big)["with_mask"] == pytest.approx(51 / 101)
    # B is under 32 px: ignored, neither missed nor a false positive.
    assert coco_ap50(truths, only_big, min_side=32)["with_mask"] == pytest.approx(1.0)
    assert coco_ap50(truths, preds, min_side=32)["with_mask"] == pytest.approx(1.0)


def test_no_predictions_at_all():
    r = coco_ap50([[Truth(A, "mask_incorrect")]], [[]])
    assert r["mask_incorrect"] == 0.0 and r["map50"] == 0.0


def test_detector_recall_by_class_and_size():
    truths = [[Truth(A, "with_mask"), Truth(B, "with_mask"), Truth(A, "without_mask")]]
    boxes = [[(12, 12, 52, 52), FAR]]
    r = detector_recall(truths, boxes)
    assert r["recall_by_size"]["with_mask"][">=32px"] == 1.0
    assert r["recall_by_size"]["with_mask"]["16-31px"] == 0.0
    assert r["recall"]["with_mask"] == 0.5
    assert r["recall"]["mask_incorrect"] is None
    assert r["recall_min32"]["without_mask"] == 1.0
    assert r["precision"] == 0.5


def test_bootstrap_intervals_are_tight_when_every_image_agrees_and_wide_when_they_differ():
    from training.evaluate import bootstrap_intervals, format_pipeline_table

    hit = ([Truth(A, "with_mask")], [Predicted(A, "with_mask", 0.9)])
    miss = ([Truth(A, "with_mask")], [Predicted(FAR, "with_mask", 0.9)])
    perfect = bootstrap_intervals(*zip(*[hit] * 10), rounds=30)
    assert perfect["map50"] == pytest.approx([1.0, 1.0]) and perfect["precision"] == pytest.approx([1.0, 1.0])
    mixed = bootstrap_intervals(*zip(*([hit] * 5 + [miss] * 5)), rounds=50)
    lo, hi = mixed["recall_min32_with_mask"]
    assert lo < 0.5 < hi  # five of ten faces found: the interval straddles it
    assert "mask_incorrect" not in " ".join(mixed)  # no such faces: no interval
    row = {"detector": "x", "map50": 0.5, "map50_min32": 0.5, "ap50": {"mask_incorrect": None},
           "recall_min32": {"with_mask": 0.5, "mask_incorrect": None, "without_mask": None},
           "recall_by_size_all": {"16-31px": None, "<16px": None}, "precision": 0.5,
           "ms_per_image_median": 1.0, "interval95": mixed}
    assert f"0.500 [{lo:.2f}, {hi:.2f}]" in format_pipeline_table([row])
