"""Detector helpers: anchors, NMS, tiles."""

import numpy as np
import pytest

from webapp.vision.blazeface import ssd_anchor_centres, tile_regions
from webapp.vision.boxes import Detection, overlaps, weighted_nms
from webapp.vision.detector import create_detector


def test_anchor_layouts_match_the_models_outputs():
    assert ssd_anchor_centres(128, (8, 16, 16, 16), 2).shape == (896, 2)
    assert ssd_anchor_centres(192, (4,), 1).shape == (2304, 2)
    a = ssd_anchor_centres(128, (8, 16, 16, 16), 2)
    assert np.allclose(a[0], [0.5 / 16, 0.5 / 16]) and np.allclose(a[1], a[0])
    assert (a >= 0).all() and (a <= 1).all()


def test_weighted_nms_blends_overlaps_and_drops_contained_boxes_of_one_face():
    same_a = Detection((10, 10, 50, 50), 0.9)
    same_b = Detection((12, 12, 52, 52), 0.6)
    outer = Detection((0, 0, 70, 70), 0.5)  # a larger box around the same face: IoU 0.33
    other = Detection((200, 200, 240, 240), 0.8)
    kept = weighted_nms([same_a, same_b, outer, other], iou=0.4)
    assert len(kept) == 2
    first = kept[0]
    assert first.score == pytest.approx(0.9) and 10 < first.box[0] < 12  # blended with same_b only


def test_a_big_box_does_not_swallow_small_faces_of_a_crowd():
    big = Detection((0, 0, 300, 300), 0.95)
    small = [Detection((10 + 40 * i, 10, 40 + 40 * i, 40), 0.7) for i in range(5)]
    assert len(weighted_nms([big, *small], iou=0.3)) == 6


def all_pairs_nms(dets: list[Detection], iou: float, contained: float = 0.8) -> list[Detection]:
    """The rule of ``weighted_nms`` spelt out over the full pair matrices (the slow, obvious way)."""
    dets = sorted(dets, key=lambda d: -d.score)
    boxes = np.array([d.box for d in dets], np.float32)
    scores = np.array([d.score for d in dets], np.float32)
    pair_iou, pair_ios = overlaps(boxes, boxes)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    ratio = np.maximum.outer(areas, areas) / np.maximum(np.minimum.outer(areas, areas), 1e-9)
    alive, kept = np.ones(len(dets), bool), []
    for i in range(len(dets)):
        if alive[i]:
            merged = alive & (pair_iou[i] >= iou)
            w = scores[merged]
            kept.append(Detection(tuple((boxes[merged] * w[:, None]).sum(0) / w.sum()), float(scores[i])))
            alive &= ~(merged | (pair_iou[i] >= iou) | ((pair_ios[i] >= contained) & (ratio[i] <= 4)))
    return kept


@pytest.mark.parametrize("seed", range(20))
def test_weighted_nms_keeps_what_the_all_pairs_rule_keeps_on_crowded_cells(seed):
    """Thousands of cells fire around a crowd's faces; the row-at-a-time merge must not change
    which boxes survive or where they land."""
    rng = np.random.default_rng(seed)
    faces = rng.uniform(0, 600, (30, 2)), rng.uniform(4, 120, 30)
    which = rng.integers(0, 30, 800)
    centres = faces[0][which] + rng.normal(0, 3, (800, 2))
    sides = faces[1][which, None] * rng.uniform(0.8, 1.3, (800, 2))
    dets = [Detection(tuple(np.r_[c - s / 2, c + s / 2].tolist()), float(p))
            for c, s, p in zip(centres, sides, rng.uniform(0.1, 1, 800).round(3))]
    fast, slow = weighted_nms(dets, 0.3), all_pairs_nms(dets, 0.3)
    assert [d.score for d in fast] == pytest.approx([d.score for d in slow])
    assert np.allclose([d.box for d in fast], [d.box for d in slow], atol=1e-3)


def test_tiles_cover_the_image_with_overlap():
    regions = tile_regions(640, 480, 2, 2, overlap=0.25)
    assert len(regions) == 4
    assert min(r[0] for r in regions) == 0 and max(r[2] for r in regions) == 640
    assert max(r[3] for r in regions) == 480
    left, right = regions[0], regions[1]
    assert right[0] < left[2]  # they overlap


def test_unknown_detector_name():
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("yolo")
