"""Detector helpers: anchors, NMS, tiles."""

import numpy as np
import pytest

from webapp.vision.blazeface import ssd_anchor_centres, tile_regions
from webapp.vision.boxes import Detection, weighted_nms
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
