"""The face detector we train ourselves (``training/train_detector.py``), run by LiteRT.

It is MediaPipe's full-range BlazeFace fine-tuned on our data and kept fully convolutional, so
it looks at the whole frame at a useful resolution instead of a 192 px letterbox: the frame is
scaled to a long side of ``still_side`` pixels (``live_side`` for the cheap pass of live video),
padded to a multiple of 32, and every 4 px cell of the result says whether a face is centred
there and how large it is. Large faces (close-ups) are taken from a coarse copy
(``coarse_side``) instead, where they fit the model's receptive field. Boxes are in the
annotators' convention (the training targets), so no box correction is needed.

Everything the served code needs to know about the file (sizes, threshold, preprocessing) is
in ``face_detector.json`` next to it, written by the training code. With ``still_mirror`` the
thorough pass also looks at the mirror image of the frame and scores each face by the mean of
the two looks (``mirrored_detections``); its faces then pass one threshold if their box's shorter
side is under ``large_face`` pixels and another (``threshold_large``) if not, both chosen on the
tune images and close-ups held out of training (the shipped file has one value for both).
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from webapp.vision.boxes import Detection, blend, clip_detection, iou_matrix, weighted_nms
from webapp.vision.detector import DetectorUnavailable
from webapp.vision.litert import load_interpreter
from webapp.vision.scaling import scale_to

DETECTOR_FILE = "face_detector.tflite"
DETECTOR_CONTRACT = "face_detector.json"
MAX_SHAPES = 6  # interpreters kept (frame sizes x passes); a camera sends one frame size
# A mirrored thorough pass keeps each look's detections down to this score before fusing them; a
# face one look does not find at all counts half of it there.
MIRROR_FLOOR = 0.1
MIRROR_MATCH_IOU = 0.5  # the two looks' boxes of one face overlap at least this much
LARGE_FACE = 32.0  # px, shorter box side from which ``threshold_large`` applies (contracts without one)


def passes_threshold(d: Detection, threshold: float, threshold_large: float, large_face: float = LARGE_FACE) -> bool:
    """Whether a fused face of the mirrored thorough pass is kept: ``threshold_large`` for boxes
    whose shorter side is at least ``large_face`` px, ``threshold`` for smaller ones."""
    x0, y0, x1, y1 = d.box
    return d.score >= (threshold_large if min(x1 - x0, y1 - y0) >= large_face else threshold)


def match_looks(a: list[Detection], b: list[Detection]) -> dict[int, int]:
    """Pairs (index in ``a`` -> index in ``b``) of boxes of one face seen in two looks: greedy by
    IoU, each box in at most one pair, IoU at least ``MIRROR_MATCH_IOU``."""
    if not a or not b:
        return {}
    iou = iou_matrix(np.array([d.box for d in a], np.float32), np.array([d.box for d in b], np.float32))
    pairs: dict[int, int] = {}
    taken: set[int] = set()
    for flat in np.argsort(-iou, axis=None):
        i, j = divmod(int(flat), len(b))
        if iou[i, j] < MIRROR_MATCH_IOU:
            break
        if i not in pairs and j not in taken:
            pairs[i] = j
            taken.add(j)
    return pairs


class TrainedDetector:
    """Grid face detector on whole frames; ``tiles=False`` runs only the cheap live pass.

    ``threshold``, ``threshold_large``, ``still_side`` and ``still_mirror`` override the contract's
    (the training code tries several); a ``threshold`` given alone applies to faces of every size.
    """

    name = "trained"

    def __init__(self, model_dir: Path, threads: int = 1, threshold: float | None = None,
                 still_side: int | None = None, still_mirror: bool | None = None,
                 threshold_large: float | None = None) -> None:
        contract_path = Path(model_dir) / DETECTOR_CONTRACT
        model_path = Path(model_dir) / DETECTOR_FILE
        if not contract_path.is_file() or not model_path.is_file():
            raise DetectorUnavailable(f"no trained face detector in {model_dir} "
                                      "(python -m training.train_detector writes it)")
        self.contract = json.loads(contract_path.read_text())
        self.model_path = model_path
        self.stride = int(self.contract["stride"])
        self.divisor = int(self.contract["divisor"])
        self.threshold = float(self.contract["threshold"] if threshold is None else threshold)
        if threshold_large is None:  # contracts written before it had one threshold for all sizes
            threshold_large = self.contract.get("threshold_large", self.threshold) if threshold is None else threshold
        self.threshold_large = float(threshold_large)
        self.large_face = float(self.contract.get("large_face", LARGE_FACE))
        self.nms_iou = float(self.contract["nms_iou"])
        self.still_side = int(self.contract["still_side"] if still_side is None else still_side)
        self.still_mirror = bool(self.contract.get("still_mirror", False) if still_mirror is None else still_mirror)
        self.live_side = int(self.contract["live_side"])
        self.coarse_side = int(self.contract["coarse_side"])
        self.coarse_min_face = float(self.contract["coarse_min_face"])
        self.threads = threads
        # One interpreter per input shape: resizing a LiteRT interpreter re-plans its XNNPACK
        # graph (tens of ms), and live video alternates two shapes (cheap and thorough pass).
        self._interpreters: OrderedDict[tuple[int, int], tuple] = OrderedDict()
        self._lock = threading.Lock()
        self._interpreter_for(*self.input_shape(480, 640, self.live_side)[2:])  # a bad file fails here

    def input_shape(self, height: int, width: int, side: int) -> tuple[int, int, int, int]:
        """(resized height, width, padded height, width) of a frame scaled to a long side of ``side``."""
        scale = side / max(height, width)
        nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
        return nh, nw, math.ceil(nh / self.divisor) * self.divisor, math.ceil(nw / self.divisor) * self.divisor

    def detect(self, image: np.ndarray, tiles: bool = True) -> list[Detection]:
        """Faces in an HxWx3 uint8 RGB image, merged over the passes by weighted NMS."""
        if tiles and self.still_mirror:
            return [d for d in self.mirrored_detections(image)
                    if passes_threshold(d, self.threshold, self.threshold_large, self.large_face)]
        return self.merge(self.raw_detections(image, tiles), image.shape[1], image.shape[0])

    def mirrored_detections(self, image: np.ndarray) -> list[Detection]:
        """The thorough pass on the frame and on its mirror image, with no threshold applied yet:
        each look merged on its own, a face seen in both looks scored by the mean of the two
        scores (``MIRROR_FLOOR`` / 2 stands in for a look that missed it), then merged once more.

        A face is a face from either side, while a texture that fires in one look only (a badge,
        an ear, leaves) is damped: on the tune images the mean scores separate faces from the rest
        better than one look does (model card, "Operating point").
        """
        h, w = image.shape[:2]
        plain = self.merge(self.raw_detections(image, True, MIRROR_FLOOR), w, h)
        mirrored = self.merge([Detection((w - d.box[2], d.box[1], w - d.box[0], d.box[3]), d.score) for d in
                               self.raw_detections(np.ascontiguousarray(image[:, ::-1]), True, MIRROR_FLOOR)], w, h)
        partner_of = match_looks(plain, mirrored)
        missing = MIRROR_FLOOR / 2
        fused = []
        for i, d in enumerate(plain):
            j = partner_of.get(i)
            if j is None:
                fused.append(Detection(d.box, (d.score + missing) / 2))
                continue
            o = mirrored[j]
            fused.append(Detection(blend([d.box, o.box], [d.score, o.score]), (d.score + o.score) / 2))
        matched = set(partner_of.values())
        fused += [Detection(o.box, (o.score + missing) / 2) for j, o in enumerate(mirrored) if j not in matched]
        return self.merge(fused, w, h)

    def raw_detections(self, image: np.ndarray, tiles: bool = True, threshold: float | None = None
                       ) -> list[Detection]:
        """Detections above the threshold over the passes ``tiles`` asks for, before merging.

        The thorough pass splits the work by face size: the full-resolution copy keeps the faces
        that are small on the coarse copy, the coarse copy the large ones (close-ups larger than
        the model's receptive field would otherwise also give half-face boxes at full resolution).
        """
        if not tiles:
            return self.detect_at(image, self.live_side, threshold, fast=True)
        split = self.coarse_min_face * max(image.shape[:2]) / self.coarse_side  # long side, image px
        return (self.detect_at(image, self.still_side, threshold, longest=(0.0, split))
                + self.detect_at(image, self.coarse_side, threshold, longest=(split, math.inf)))

    def merge(self, found: list[Detection], width: int, height: int) -> list[Detection]:
        """One box per face: the cells around a face centre all fire, so their boxes are averaged."""
        return [clip_detection(d, width, height) for d in weighted_nms(found, self.nms_iou)]

    def detect_at(self, image: np.ndarray, side: int, threshold: float | None = None,
                  longest: tuple[float, float] = (0.0, math.inf), fast: bool = False) -> list[Detection]:
        """Raw detections (before NMS) with the frame's long side scaled to ``side`` pixels, keeping
        boxes whose longer side (in image pixels) lies in ``longest``; ``fast`` scales the frame the
        cheap way (``webapp/vision/scaling.py``)."""
        threshold = self.threshold if threshold is None else threshold
        h, w = image.shape[:2]
        scale = side / max(h, w)
        nh, nw, ch, cw = self.input_shape(h, w, side)
        canvas = np.full((1, ch, cw, 3), -1.0, np.float32)  # black padding, as in training
        view = canvas[0, :nh, :nw]
        view[...] = scale_to(image, nw, nh, fast)
        view *= 1.0 / 127.5  # in place: no temporaries on the frame path
        view -= 1.0
        with self._lock:
            interp, input_index, score_index, box_index = self._interpreter_for(ch, cw)
            interp.set_tensor(input_index, canvas)
            interp.invoke()
            logits = interp.get_tensor(score_index)[0, :, :, 0]
            raw = interp.get_tensor(box_index)[0]
        cut = math.log(threshold / (1 - threshold))  # compare logits: no sigmoid on every cell
        ys, xs = np.nonzero(logits >= cut)
        if ys.size == 0:
            return []
        scores = 1.0 / (1.0 + np.exp(-logits[ys, xs]))
        r = raw[ys, xs]
        cx = (xs + 0.5) * self.stride + r[:, 0]
        cy = (ys + 0.5) * self.stride + r[:, 1]
        bw, bh = np.abs(r[:, 2]), np.abs(r[:, 3])
        size = np.maximum(bw, bh) / scale
        keep = (size >= longest[0]) & (size < longest[1])
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)[keep] / scale
        scores = scores[keep]
        return [Detection(tuple(b), s) for b, s in zip(boxes.tolist(), scores.tolist())]

    def _interpreter_for(self, height: int, width: int) -> tuple:
        """(interpreter, input, score output, box output) for this input shape; keeps the last few."""
        key = (height, width)
        if key in self._interpreters:
            self._interpreters.move_to_end(key)
            return self._interpreters[key]
        interp = load_interpreter(self.model_path, self.threads)
        input_index = interp.get_input_details()[0]["index"]
        interp.resize_tensor_input(input_index, [1, height, width, 3])
        interp.allocate_tensors()
        outputs = interp.get_output_details()
        entry = (interp, input_index, next(o["index"] for o in outputs if o["shape"][-1] == 1),
                 next(o["index"] for o in outputs if o["shape"][-1] == 4))
        self._interpreters[key] = entry
        if len(self._interpreters) > MAX_SHAPES:
            self._interpreters.popitem(last=False)
        return entry
