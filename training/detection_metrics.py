"""Detection metrics: COCO-style AP@0.5 through pycocotools, and detector recall by class and size.

AP is computed by the established COCO evaluator, not by hand. "Faces >= 32 px" restricts the
ground truth to faces whose shorter side is at least 32 px: smaller true faces are marked as
crowd regions, so a detection on them counts neither as a hit nor as a false positive.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from training.metrics import SIZE_BUCKETS, size_bucket
from webapp.vision.boxes import iou_matrix
from webapp.vision.labels import LABELS

Box = tuple[float, float, float, float]
RECALL_IOU = 0.4  # "found" for detector recall, as in the detector survey of the issue tracker


@dataclass(frozen=True)
class Truth:
    box: Box
    label: str


@dataclass(frozen=True)
class Predicted:
    box: Box
    label: str
    score: float


def _short(box: Box) -> float:
    return min(box[2] - box[0], box[3] - box[1])


def coco_ap50(truths: Sequence[Sequence[Truth]], preds: Sequence[Sequence[Predicted]],
              min_side: float = 0.0) -> dict[str, float | None]:
    """AP@0.5 per label (``None`` where a label has no ground truth) and their mean as "map50"."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    categories = [{"id": i + 1, "name": label} for i, label in enumerate(LABELS)]
    cat_id = {label: i + 1 for i, label in enumerate(LABELS)}
    images, annotations, results = [], [], []
    counted = {label: 0 for label in LABELS}
    for image_id, (gt, pr) in enumerate(zip(truths, preds), start=1):
        images.append({"id": image_id, "width": 1, "height": 1})
        for t in gt:
            x0, y0, x1, y1 = t.box
            crowd = int(_short(t.box) < min_side)
            counted[t.label] += 1 - crowd
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": cat_id[t.label], "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": (x1 - x0) * (y1 - y0), "iscrowd": crowd})
        for p in pr:
            x0, y0, x1, y1 = p.box
            results.append({"image_id": image_id, "category_id": cat_id[p.label],
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": p.score})
    out: dict[str, float | None] = {label: None for label in LABELS}
    if not any(counted.values()):
        return {"map50": None, **out}
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
            ev = COCOeval(gt, dt, "bbox")
            ev.params.iouThrs = np.array([0.5])
            ev.params.maxDets = [1, 10, 1000]
            ev.params.areaRng = [[0, 1e10]] * 4  # size is handled by min_side, not by area
            ev.evaluate()
            ev.accumulate()
    for k, label in enumerate(LABELS):
        if not counted[label]:
            continue
        if not results:
            out[label] = 0.0
            continue
        precision = ev.eval["precision"][0, :, k, 0, -1]  # IoU 0.5, all recall points, area all, 1000 dets
        valid = precision[precision > -1]
        out[label] = float(valid.mean()) if valid.size else 0.0
    present = [v for v in out.values() if v is not None]
    return {"map50": float(np.mean(present)), **out}


def detector_recall(truths: Sequence[Sequence[Truth]], boxes: Sequence[Sequence[Box]],
                    iou: float = RECALL_IOU) -> dict:
    """Share of true faces overlapped (IoU >= ``iou``) by any detection, per label and size bucket.

    Also the class-agnostic precision: share of detections that overlap some true face.
    """
    found = {(lab, b): 0 for lab in LABELS for b, _, _ in SIZE_BUCKETS}
    total = dict(found)
    hits = n_det = 0
    for gt, det in zip(truths, boxes):
        n_det += len(det)
        m = iou_matrix(np.array([t.box for t in gt], np.float32).reshape(-1, 4),
                       np.array(det, np.float32).reshape(-1, 4))
        if m.size:
            hits += int((m.max(0) >= iou).sum())
        for i, t in enumerate(gt):
            key = (t.label, size_bucket(_short(t.box)))
            total[key] += 1
            found[key] += int(m.shape[1] > 0 and m[i].max() >= iou)

    def ratio(keys) -> float | None:
        n = sum(total[k] for k in keys)
        return None if n == 0 else sum(found[k] for k in keys) / n

    buckets = [b for b, _, _ in SIZE_BUCKETS]
    return {
        "recall": {lab: ratio([(lab, b) for b in buckets]) for lab in LABELS},
        "recall_min32": {lab: ratio([(lab, ">=32px")]) for lab in LABELS},
        "recall_by_size": {lab: {b: ratio([(lab, b)]) for b in buckets} for lab in LABELS},
        "support_by_size": {lab: {b: total[(lab, b)] for b in buckets} for lab in LABELS},
        "recall_by_size_all": {b: ratio([(lab, b) for lab in LABELS]) for b in buckets},
        "recall_all": ratio(list(total)),
        "precision": None if n_det == 0 else hits / n_det,
        "detections_per_image": n_det / max(len(boxes), 1),
    }
