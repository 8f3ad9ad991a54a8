"""Faces of the datasets held in memory, and the augmentation that makes training look like serving.

Serving crops faces out of webcam frames around a *detector's* box, often small, blurred,
JPEG-compressed and under odd light. Training therefore cuts each face from its source image
with the shared ``crop.cut_face`` around a jittered box, then applies flips, small rotations,
brightness/contrast, blur, down-then-up scaling and JPEG re-encoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from training.datasets import Sample, read_rgb
from webapp.vision.crop import cut_face, to_model_input
from webapp.vision.labels import LABELS


@dataclass(frozen=True)
class FaceRef:
    image: int  # index into FaceSet.images
    box: tuple[float, float, float, float]  # in the stored (possibly shrunk) image
    label: int  # index into LABELS
    source: str
    group: str  # the source image's split group (see datasets.split_by_image)
    short_side: float  # of the original annotation, for size buckets


class FaceSet:
    """All faces of some samples, with their source images decoded once and kept in memory.

    Large images are shrunk on load so that the biggest face is at most ``max_face`` pixels:
    crops are resized to the model size anyway, and it bounds memory and augmentation time.
    """

    def __init__(self, samples: Sequence[Sample], max_face: int = 320, desc: str = "faces") -> None:
        self.images: list[np.ndarray] = []
        self.faces: list[FaceRef] = []
        for sample in tqdm(samples, desc=f"loading {desc}", unit="img", leave=False):
            try:
                image = read_rgb(sample.path, orient=sample.whole_image)
            except OSError:
                continue  # counted by the reader already; a file may vanish in between
            sy, sx = image.shape[0] / sample.height, image.shape[1] / sample.width
            longest = max(max(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in sample.faces) * max(sx, sy)
            scale = min(1.0, max_face / max(longest, 1.0))
            if scale < 1.0:
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            index = len(self.images)
            self.images.append(image)
            for f in sample.faces:
                x0, y0, x1, y1 = f.box
                box = (x0 * sx * scale, y0 * sy * scale, x1 * sx * scale, y1 * sy * scale)
                self.faces.append(FaceRef(index, box, LABELS.index(f.label), sample.source,
                                          sample.group, min(x1 - x0, y1 - y0)))

    def __len__(self) -> int:
        return len(self.faces)

    @property
    def labels(self) -> np.ndarray:
        return np.array([f.label for f in self.faces], dtype=np.int64)

    @property
    def sources(self) -> np.ndarray:
        return np.array([f.source for f in self.faces])

    @property
    def groups(self) -> np.ndarray:
        return np.array([f.group for f in self.faces])

    @property
    def short_sides(self) -> np.ndarray:
        return np.array([f.short_side for f in self.faces], dtype=np.float32)

    def crops(self, size: int, margin: float) -> np.ndarray:
        """Unaugmented uint8 crops around the true boxes (for evaluation)."""
        return np.stack([cut_face(self.images[f.image], f.box, size, margin) for f in self.faces])


def jitter_box(box: Sequence[float], rng: np.random.Generator, shift: float = 0.08,
               scale: float = 0.12) -> tuple[float, float, float, float]:
    """Shift the centre by ~N(0, shift) of the box size and scale each side by ~exp(N(0, scale))."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2 + rng.normal(0, shift) * w
    cy = (y0 + y1) / 2 + rng.normal(0, shift) * h
    s = math.exp(rng.normal(0, scale))
    w2 = w * s * math.exp(rng.normal(0, scale / 2)) / 2
    h2 = h * s * math.exp(rng.normal(0, scale / 2)) / 2
    return cx - w2, cy - h2, cx + w2, cy + h2


def augment_crop(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric and geometric augmentation of one uint8 crop (same size in and out)."""
    size = crop.shape[0]
    out = crop
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        angle = rng.uniform(-12, 12)
        m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
        out = cv2.warpAffine(np.ascontiguousarray(out), m, (size, size), borderMode=cv2.BORDER_REPLICATE)
    if rng.random() < 0.35:
        # A far face: few real pixels, upscaled by the crop function.
        small = int(rng.integers(12, max(13, size // 2)))
        out = cv2.resize(np.ascontiguousarray(out), (small, small), interpolation=cv2.INTER_AREA)
        out = cv2.resize(out, (size, size), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.2:
        k = int(rng.choice([3, 5]))
        out = cv2.GaussianBlur(np.ascontiguousarray(out), (k, k), 0)
    out = np.asarray(out, np.float32)
    if rng.random() < 0.8:
        contrast = rng.uniform(0.7, 1.3)
        brightness = rng.uniform(-30, 30)
        out = (out - 128.0) * contrast + 128.0 + brightness
    if rng.random() < 0.2:
        # Colour cast (white balance of cheap webcams).
        out = out * rng.uniform(0.9, 1.1, size=3)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.25:
        ok, enc = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(35, 90))])
        if ok:
            out = cv2.imdecode(enc, cv2.IMREAD_UNCHANGED)
    return out


def augmented_batch(faces: FaceSet, indices: np.ndarray, size: int, margin: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Model-ready float32 batch of augmented crops for ``indices``."""
    batch = np.empty((len(indices), size, size, 3), np.uint8)
    for row, i in enumerate(indices):
        ref = faces.faces[int(i)]
        crop = cut_face(faces.images[ref.image], jitter_box(ref.box, rng), size, margin)
        batch[row] = augment_crop(crop, rng)
    return to_model_input(batch)
