"""Scored boxes and their geometry: overlaps, weighted non-maximum suppression, clipping.

Shared by the detectors, the tracker and the evaluation code, none of which should have to
import "the detector" to compare two boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    score: float


def overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise (IoU, intersection over the smaller box) of (N, 4) and (M, 4) boxes."""
    a_cols, b_cols = a.T[:, :, None], b.T[:, None, :]
    return _ratios(_intersection(a_cols, b_cols), _area(a_cols), _area(b_cols))


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas of boxes given as (4, ...) broadcastable x0, y0, x1, y1 rows: one form
    serves the all-pairs matrix and weighted_nms's one-box-against-the-rest rows."""
    return (np.clip(np.minimum(a[2], b[2]) - np.maximum(a[0], b[0]), 0, None)
            * np.clip(np.minimum(a[3], b[3]) - np.maximum(a[1], b[1]), 0, None))


def _area(cols: np.ndarray) -> np.ndarray:
    return (cols[2] - cols[0]) * (cols[3] - cols[1])


def _ratios(inter: np.ndarray, area_a: np.ndarray, area_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IoU, intersection over the smaller box) from intersections and the two boxes' areas."""
    iou = inter / np.maximum(area_a + area_b - inter, 1e-9)
    ios = inter / np.maximum(np.minimum(area_a, area_b), 1e-9)
    return iou, ios


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) boxes."""
    return overlaps(a, b)[0]


def blend(boxes: np.ndarray, weights: np.ndarray) -> tuple[float, float, float, float]:
    """The score-weighted mean of (N, 4) boxes of one face: one steady box from several looks."""
    w = np.asarray(weights, np.float32)[:, None]
    return tuple(float(v) for v in (np.asarray(boxes, np.float32) * w).sum(0) / w.sum())


def weighted_nms(dets: list[Detection], iou: float, contained: float = 0.8) -> list[Detection]:
    """Greedy NMS that averages each kept box with the boxes it suppresses (score-weighted).

    Averaging steadies boxes between frames and across models better than keeping the single
    top box, as MediaPipe's own blending NMS does. A box lying mostly (``contained``) inside
    another of similar scale (at most 4x its area) is the same face too - the short-range model
    draws larger boxes (hair to chin) than the full-range one, so their IoU alone can fall under
    the threshold - and is dropped without being averaged in. The scale limit keeps a big box
    from swallowing the small faces of a crowd.

    Overlaps are computed one kept box at a time against the boxes after it: a thorough pass
    hands over thousands of cells but keeps a few dozen boxes, and an all-pairs matrix of
    thousands squared cost more than the model itself.
    """
    if not dets:
        return []
    boxes = np.array([d.box for d in dets], np.float32)
    scores = np.array([d.score for d in dets], np.float32)
    order = np.argsort(-scores, kind="stable")  # ties (saturated scores) keep their order
    boxes, scores = boxes[order], scores[order]
    cols = np.ascontiguousarray(boxes.T)  # (4, N): each coordinate contiguous for the row slices
    areas = _area(cols)
    alive = np.ones(len(boxes), bool)
    kept = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        iou_i, ios_i = _ratios(_intersection(cols[:, i], cols[:, i:]), areas[i], areas[i:])
        near = iou_i >= iou  # same face, same kind of box
        near[0] = True
        scale = np.maximum(areas[i], areas[i:]) / np.maximum(np.minimum(areas[i], areas[i:]), 1e-9)
        inside = (ios_i >= contained) & (scale <= 4.0)
        merge = alive[i:] & near
        kept.append(Detection(blend(boxes[i:][merge], scores[i:][merge]), float(scores[i])))
        alive[i:] &= ~(near | inside)  # average the first, only drop the contained boxes
    return kept


def area(d: Detection) -> float:
    x0, y0, x1, y1 = d.box
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def clip_detection(d: Detection, w: int, h: int) -> Detection:
    """The detection's box cut to the image."""
    x0, y0, x1, y1 = d.box
    return Detection((min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w),
                      min(max(y1, 0.0), h)), d.score)
