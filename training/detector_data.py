"""Training crops for the face detector: scenes at many scales, close-ups pasted in, dense targets.

The served detector sees a whole frame letterboxed to a fixed long side, so a face's size in
its input depends on the camera's distance and resolution. Each training example is therefore
a fixed-size crop of a scene resized by a random factor around the serving scale (log-uniform,
0.25x-2x), with masked close-ups (maskedfacenet-maskon) pasted in at sizes the street photos
rarely have, then flipped and degraded (colour, blur, JPEG noise) like webcam frames. Face
pictures without boxes (chandrikadeb7, masked and unmasked) can be pasted the same way once a
teacher detector has boxed their face (``boxed_by_teacher``).

Targets follow the detector's grid (one cell per ``STRIDE`` input pixels): a cell is positive
for a face when its centre lies within ``max(3 px, 0.25 x face side)`` of the face centre, and
ignored (no score loss) when it lies elsewhere inside a face box, so that the model is not
punished for firing slightly off centre. Faces too small to see (< 4 px) or mostly cut off by
the crop are ignore regions, not negatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from training.datasets import Sample, read_rgb
from webapp.vision.detector import FaceDetector

MIN_FACE = 4.0        # px in the crop: smaller faces are ignore regions
MIN_VISIBLE = 0.6     # share of a face's box inside the crop to count as a face
POSITIVE_RADIUS = (3.0, 0.25)  # px, share of the face side
CLOSEUP_FACE = (12.0, 240.0)  # px, face sides pasted close-ups get (log-uniform): the shipped recipe
PICTURE_MIN_SHARE = 0.3  # a boxed face picture's face fills at least this share of its long side


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # HxWx3 uint8 RGB
    boxes: np.ndarray  # (N, 4) float32 x0, y0, x1, y1 in image pixels
    source: str
    labels: tuple[str, ...] = ()  # of the boxes


def load_scenes(samples: Sequence[Sample], max_side: int = 1024, desc: str = "scenes") -> list[Scene]:
    """Decode every sample once; images larger than ``max_side`` are shrunk (boxes with them)."""
    scenes = []
    for sample in tqdm(samples, desc=f"loading {desc}", unit="img", leave=False):
        try:
            image = read_rgb(sample.path, orient=sample.whole_image)
        except OSError:
            continue
        sx, sy = image.shape[1] / sample.width, image.shape[0] / sample.height
        scale = min(1.0, max_side / max(image.shape[:2]))
        if scale < 1.0:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes = np.array([f.box for f in sample.faces], np.float32).reshape(-1, 4)
        boxes *= np.array([sx, sy, sx, sy], np.float32) * scale
        scenes.append(Scene(image, boxes, sample.source, tuple(f.label for f in sample.faces)))
    return scenes


def boxed_by_teacher(pictures: Sequence[Scene], teacher: FaceDetector, min_score: float = 0.75,
                     min_share: float = PICTURE_MIN_SHARE, seen_score: float = 0.5) -> list[Scene]:
    """Face pictures labelled only by class, each given the box a teacher detector draws around its face.

    A picture is kept only when the teacher finds exactly one face (scored at least
    ``seen_score``), confidently (``min_score``), filling at least ``min_share`` of the picture's
    long side and cut by at most one of the picture's edges: pictures that are really scenes (a
    small person in a room), show several people or hide the face would otherwise paste wrong
    boxes or unlabelled faces, and a face cropped on two sides pasted into a scene looks like no
    face a camera sees. The teacher is MediaPipe's BlazeFace as shipped (never trained on our
    data), so the boxes do not depend on an earlier run of ours.
    """
    kept = []
    for picture in tqdm(pictures, desc="boxing pictures", unit="img", leave=False):
        found = [d for d in teacher.detect(picture.image) if d.score >= seen_score]
        if len(found) != 1 or found[0].score < min_score:
            continue
        x0, y0, x1, y1 = found[0].box
        h, w = picture.image.shape[:2]
        cut_sides = (x0 <= 1) + (y0 <= 1) + (x1 >= w - 1) + (y1 >= h - 1)
        if max(x1 - x0, y1 - y0) < min_share * max(h, w) or cut_sides > 1:
            continue
        kept.append(Scene(picture.image, np.array([found[0].box], np.float32), picture.source, picture.labels[:1]))
    return kept


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    return cv2.resize(image, None, fx=scale, fy=scale,
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


class CropSampler:
    """Draws (crop, face boxes) training examples; deterministic for a given generator."""

    def __init__(self, scenes: Sequence[Scene], closeups: Sequence[Scene], crop: int = 320,
                 serve_side: int = 512, scale_range: tuple[float, float] = (0.25, 2.0),
                 paste_prob: float = 0.5, closeup_face: tuple[float, float] = CLOSEUP_FACE,
                 scene_weights: Sequence[float] | None = None, pictures: Sequence[Scene] = (),
                 picture_share: float = 0.0, region_blur: float = 0.0) -> None:
        if not scenes:
            raise ValueError("no training scenes")
        self.scenes = list(scenes)
        self.closeups = [c for c in closeups if len(c.boxes)]
        self.crop = crop
        self.serve_side = serve_side
        self.scale_range = scale_range
        self.paste_prob = paste_prob if self.closeups else 0.0
        self.closeup_face = closeup_face
        self.scene_p = None if scene_weights is None else np.asarray(scene_weights, float) / np.sum(scene_weights)
        self.pictures = [p for p in pictures if len(p.boxes)] if picture_share > 0 else []
        self.picture_share = picture_share
        self.region_blur = region_blur

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A ``crop`` x ``crop`` uint8 RGB image and its (N, 4) face boxes (may extend past the edge)."""
        canvas = np.zeros((self.crop, self.crop, 3), np.uint8)
        boxes = np.zeros((0, 4), np.float32)
        # A scene smaller than the crop leaves black borders (as a letterboxed frame does), but
        # mostly another scene fills them (mosaic): more faces and backgrounds per step.
        layers = 2 if rng.random() < 0.6 else 1
        for _ in range(layers):
            scene = self.scenes[int(rng.integers(len(self.scenes)) if self.scene_p is None
                                    else rng.choice(len(self.scenes), p=self.scene_p))]
            h, w = scene.image.shape[:2]
            scale = self.serve_side / max(h, w) * _log_uniform(rng, *self.scale_range)
            canvas, boxes = self._place(canvas, boxes, _resize(scene.image, scale), scene.boxes * scale, rng)
        if rng.random() < self.paste_prob:
            for _ in range(int(rng.integers(1, 4))):
                canvas, boxes = self._paste(canvas, boxes, rng)
        return self._degrade(canvas, boxes, rng)

    def _place(self, canvas: np.ndarray, boxes: np.ndarray, image: np.ndarray, image_boxes: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``image`` at a random place over the canvas (cut when larger); faces of the canvas
        whose centre it covers leave the targets."""
        c = self.crop
        h, w = image.shape[:2]
        # Offsets of the image's origin in the canvas: negative when the image is larger.
        ox = int(rng.integers(c - w, 1)) if w > c else int(rng.integers(0, c - w + 1))
        oy = int(rng.integers(c - h, 1)) if h > c else int(rng.integers(0, c - h + 1))
        x0, y0 = max(0, -ox), max(0, -oy)
        x1, y1 = min(w, c - ox), min(h, c - oy)
        canvas[y0 + oy:y1 + oy, x0 + ox:x1 + ox] = image[y0:y1, x0:x1]
        covered = np.array([ox + x0, oy + y0, ox + x1, oy + y1], np.float32)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = ((centres >= covered[:2]) & (centres <= covered[2:])).all(1)
        return canvas, np.concatenate([boxes[~inside], image_boxes + np.array([ox, oy, ox, oy], np.float32)])

    def _paste(self, canvas: np.ndarray, boxes: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
        """Paste a close-up's face with some surroundings; faces it covers leave the targets.

        ``picture_share`` of the pastes take a boxed face picture instead of a close-up (no draw
        is spent on it without pictures, so recipes without them sample as before)."""
        pool = self.pictures if self.pictures and rng.random() < self.picture_share else self.closeups
        closeup = pool[int(rng.integers(len(pool)))]
        fx0, fy0, fx1, fy1 = closeup.boxes[0]
        side = _log_uniform(rng, *self.closeup_face)
        scale = side / max(fx1 - fx0, fy1 - fy0, 1.0)
        margin = rng.uniform(0.15, 0.8) * max(fx1 - fx0, fy1 - fy0)
        ch, cw = closeup.image.shape[:2]
        px0, py0 = int(max(0, fx0 - margin)), int(max(0, fy0 - margin))
        px1, py1 = int(min(cw, fx1 + margin)), int(min(ch, fy1 + margin))
        patch = _resize(closeup.image[py0:py1, px0:px1], scale)
        face = (closeup.boxes[:1] - np.array([px0, py0, px0, py0], np.float32)) * scale
        return self._place(canvas, boxes, patch, face, rng)

    def _degrade(self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        c = self.crop
        if rng.random() < 0.5:
            image = image[:, ::-1]
            boxes = np.stack([c - boxes[:, 2], boxes[:, 1], c - boxes[:, 0], boxes[:, 3]], 1)
        out = np.asarray(image, np.float32)
        if rng.random() < 0.8:
            out = (out - 128.0) * rng.uniform(0.65, 1.35) + 128.0 + rng.uniform(-35, 35)
        if rng.random() < 0.3:
            out = out * rng.uniform(0.85, 1.15, size=3)
        if rng.random() < 0.15:
            out = out.mean(2, keepdims=True).repeat(3, 2)  # grey-scale cameras
        out = np.clip(out, 0, 255).astype(np.uint8)
        if rng.random() < 0.2:
            k = int(rng.choice([3, 5]))
            out = cv2.GaussianBlur(out, (k, k), 0)
        if self.region_blur and rng.random() < self.region_blur:
            out = _blur_region(out, rng)
        if rng.random() < 0.3:
            ok, enc = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 90))])
            if ok:
                out = cv2.imdecode(enc, cv2.IMREAD_UNCHANGED)
        return np.ascontiguousarray(out), boxes.astype(np.float32)


def _blur_region(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Defocus (Gaussian, sigma 1-3 px) or motion blur (a 5-11 px line at any angle) over a random
    rectangle of the crop: faces a camera sees out of focus or moving, beside sharp ones."""
    c = image.shape[0]
    w, h = (int(rng.uniform(0.4, 1.0) * c) for _ in range(2))
    x, y = int(rng.integers(0, c - w + 1)), int(rng.integers(0, c - h + 1))
    region = image[y:y + h, x:x + w]
    if rng.random() < 0.5:
        blurred = cv2.GaussianBlur(region, (0, 0), rng.uniform(1.0, 3.0))
    else:
        length = int(rng.integers(5, 12))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2] = 1.0 / length
        turn = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, turn, (length, length))
        blurred = cv2.filter2D(region, -1, kernel / max(kernel.sum(), 1e-6))
    out = image.copy()
    out[y:y + h, x:x + w] = blurred
    return out


def grid_targets(boxes: np.ndarray, size: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense targets for one ``size`` x ``size`` crop.

    Returns ``score`` (G, G) with 1 positive, 0 negative, -1 ignored; ``box`` (G, G, 4) =
    (centre x - cell x, centre y - cell y, width, height) in pixels at positive cells; and
    ``weight`` (G, G) = 1 / face side at positive cells (the box loss is relative to the face).
    """
    g = size // stride
    centres = (np.arange(g, dtype=np.float32) + 0.5) * stride
    score = np.zeros((g, g), np.float32)
    box = np.zeros((g, g, 4), np.float32)
    weight = np.zeros((g, g), np.float32)
    if not len(boxes):
        return score, box, weight
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    clipped = np.clip(boxes, 0, size)
    visible = ((clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
               / np.maximum(bw * bh, 1e-6))
    # Larger faces first, so where faces overlap the smaller (front) one's cells win.
    for i in np.argsort(-(bw * bh)):
        x0, y0, x1, y1 = boxes[i]
        ix = (centres >= x0) & (centres <= x1)
        iy = (centres >= y0) & (centres <= y1)
        inside = iy[:, None] & ix[None, :]
        score[inside & (score == 0)] = -1
        if min(bw[i], bh[i]) < MIN_FACE or visible[i] < MIN_VISIBLE:
            continue
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        radius = max(POSITIVE_RADIUS[0], POSITIVE_RADIUS[1] * min(bw[i], bh[i]))
        near = ((centres[None, :] - cx) ** 2 + (centres[:, None] - cy) ** 2) <= radius ** 2
        score[near] = 1
        ys, xs = np.nonzero(near)
        box[ys, xs] = np.stack([np.full(len(xs), cx) - centres[xs], np.full(len(ys), cy) - centres[ys],
                                np.full(len(xs), bw[i]), np.full(len(xs), bh[i])], 1)
        weight[ys, xs] = 1.0 / max(bw[i], bh[i])
    return score, box, weight


def training_batch(sampler: CropSampler, size: int, rng: np.random.Generator, stride: int
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``size`` crops as model input in [-1, 1] and their stacked grid targets."""
    images, scores, boxes, weights = [], [], [], []
    for _ in range(size):
        image, faces = sampler.sample(rng)
        s, b, w = grid_targets(faces, sampler.crop, stride)
        images.append(image)
        scores.append(s)
        boxes.append(b)
        weights.append(w)
    x = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return x, {"score": np.stack(scores)[..., None], "box": np.stack(boxes), "weight": np.stack(weights)[..., None]}
