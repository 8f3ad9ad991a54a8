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
from webapp.vision.classifier import MaskClassifier
from webapp.vision.crop import cut_face, to_model_input
from webapp.vision.labels import LABELS, MASK_INCORRECT, WITH_MASK, WITHOUT_MASK


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

    def subset(self, keep: np.ndarray) -> "FaceSet":
        """The faces where ``keep`` is true, sharing the decoded images (no copy)."""
        part = FaceSet.__new__(FaceSet)
        part.images = self.images
        part.faces = [f for f, k in zip(self.faces, keep) if k]
        return part

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

    def model_inputs(self, classifier: MaskClassifier) -> dict[int, np.ndarray]:
        """Every face as ``classifier`` reads it (float32 crops per member input side)."""
        return {size: to_model_input(self.crops(size, classifier.margin)) for size in classifier.input_sizes}


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


def face_in_crop(size: int, margin: float) -> tuple[float, float]:
    """Where the face box lies in a ``cut_face`` crop of side ``size``: its first row/column and
    its side (the crop is the box grown by ``margin`` of its side on every edge)."""
    return size * margin / (1 + 2 * margin), size / (1 + 2 * margin)


def cover_mouth_with_hand(crop: np.ndarray, margin: float, rng: np.random.Generator) -> np.ndarray:
    """Paint a hand (three or four skin-coloured fingers, shaded, with dark creases between them)
    across the mouth of a face crop.

    An unmasked face with a hand in front of the mouth is still unmasked; without such examples
    the model learns "something covers the mouth" = mask. The colour is the face's own forehead
    and the fingers have creases and shading, so the occluder reads as skin, not as a plain
    beige mask. Called for unmasked faces only.
    """
    size = crop.shape[0]
    face0, fh = face_in_crop(size, margin)
    forehead = crop[int(face0 + 0.1 * fh):int(face0 + 0.3 * fh), int(size * 0.4):int(size * 0.6)]
    colour = np.median(forehead.reshape(-1, 3), axis=0) * rng.uniform(0.85, 1.1)
    fingers = int(rng.integers(3, 5))
    width = rng.uniform(0.09, 0.12) * fh  # one finger's thickness
    length = rng.uniform(0.45, 0.7) * fh
    angle = rng.uniform(-25, 25)
    cx = size / 2 + rng.normal(0, 0.08) * fh
    top = face0 + rng.uniform(0.6, 0.72) * fh  # the upper finger lies on the upper lip or just below
    direction = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
    mask = np.zeros((size, size), np.float32)
    light = np.zeros((size, size), np.float32)
    for i in range(fingers):
        centre = np.array([cx, top + (i + 0.5) * width]) + direction * rng.normal(0, 0.04 * fh)
        ends = [centre - direction * length / 2, centre + direction * length / 2]
        p0, p1 = (tuple(int(round(v)) for v in e) for e in ends)
        thickness = max(int(round(width * 0.95)), 1)
        cv2.line(mask, p0, p1, 1.0, thickness, cv2.LINE_AA)
        cv2.line(light, p0, p1, 1.0, max(thickness // 3, 1), cv2.LINE_AA)  # a highlight along the finger
    mask = cv2.GaussianBlur(mask, (0, 0), max(size / 160, 0.6))[..., None]
    light = cv2.GaussianBlur(light, (0, 0), max(width / 3, 0.6))[..., None]
    shade = 0.78 + 0.3 * light + rng.normal(0, 0.02, (size, size, 1)).astype(np.float32)
    hand = np.clip(colour[None, None, :] * shade, 0, 255)
    return (crop * (1 - mask) + hand * mask).astype(np.uint8)


def pull_mask_below_nose(crop: np.ndarray, donor: np.ndarray, margin: float,
                         rng: np.random.Generator) -> np.ndarray:
    """Paint a real mask, taken from another photo's properly masked face (``donor``, a crop of
    the same size and margin), onto an unmasked face with its upper edge slid below the nose or
    onto the chin: a ``mask_incorrect`` face in a street photo's own light, blur and resolution.

    Nearly all ``mask_incorrect`` training faces are MaskedFace-Net studio portraits; the
    street photos the product sees hold only a few dozen, most of them small. Every unmasked
    face of a street photo, with the lower half of a real masked face laid over its mouth and
    chin, shows the one cue that tells the class apart (a nose above a mask) in that domain.
    The donor's crop is shifted down by 18-40 % of the face height, so its mask's top edge
    (near the nose bridge on a mask worn properly) lands between the nose tip and the chin;
    the paste ends a little below the chin and inside the cheeks, so the face keeps its own
    neck and background.
    """
    size = crop.shape[0]
    face0, fh = face_in_crop(size, margin)
    shift = rng.uniform(0.18, 0.4) * fh
    moved = cv2.warpAffine(np.ascontiguousarray(donor), np.float32([[1, 0, 0], [0, 1, shift]]), (size, size),
                           borderMode=cv2.BORDER_REPLICATE)
    rows = np.arange(size, dtype=np.float32)
    feather = max(0.04 * fh, 0.75)
    top = face0 + (0.38 + rng.uniform(-0.04, 0.04)) * fh + shift  # where the slid mask starts
    bottom = face0 + rng.uniform(1.02, 1.12) * fh  # the mask hangs a little below the chin
    vertical = np.clip(np.minimum(rows - top, bottom - rows) / feather + 0.5, 0, 1)
    half = rng.uniform(0.38, 0.46) * fh  # half the mask's width
    horizontal = np.clip((half - np.abs(rows - size / 2)) / feather + 0.5, 0, 1)
    alpha = (vertical[:, None] * horizontal[None, :])[..., None]
    return (crop * (1 - alpha) + moved * alpha).astype(np.uint8)


class MaskDonors:
    """The properly masked faces of one street-photo dataset, by size, that lend their masks to
    ``pull_mask_below_nose``; only unmasked faces of that dataset take one.

    Only a dataset with boxes drawn around faces fits: the paste assumes the crop's geometry
    (nose and chin at known heights of the box), which whole-picture labels do not have. A donor
    is drawn among the masked faces closest in size to the face it goes onto (within a factor of
    two where there are any), so a 12 px street face gets a 12 px mask's blur and JPEG blocks,
    not an upscaled close-up's.
    """

    def __init__(self, faces: FaceSet, source: str) -> None:
        self.source = source
        masked = np.flatnonzero((faces.sources == source) & (faces.labels == LABELS.index(WITH_MASK)))
        sides = faces.short_sides[masked]
        order = np.argsort(sides, kind="stable")
        self.faces, self.sides = [faces.faces[int(k)] for k in masked[order]], sides[order]

    def takes(self, ref: FaceRef) -> bool:
        return bool(self.faces) and ref.source == self.source

    def pick(self, ref: FaceRef, rng: np.random.Generator) -> FaceRef:
        lo, hi = np.searchsorted(self.sides, [ref.short_side / 2, ref.short_side * 2])
        if hi <= lo:  # no masked face within a factor of two: the nearest in size
            lo = min(int(np.searchsorted(self.sides, ref.short_side)), len(self.faces) - 1)
            hi = lo + 1
        return self.faces[int(rng.integers(lo, hi))]


def augmented_batch(faces: FaceSet, indices: np.ndarray, size: int, margin: float,
                    rng: np.random.Generator, occlusion: float = 0.0, pulled_mask: float = 0.0,
                    donors: MaskDonors | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Model-ready float32 batch of augmented crops for ``indices`` and their labels.

    With probability ``occlusion`` an unmasked face gets a hand over its mouth (see
    ``cover_mouth_with_hand``); with probability ``pulled_mask`` an unmasked face that ``donors`` takes
    gets a donor's mask below its nose instead and becomes ``mask_incorrect`` (see
    ``pull_mask_below_nose``; ``donors`` must be given then).
    """
    batch = np.empty((len(indices), size, size, 3), np.uint8)
    labels = np.array([faces.faces[int(i)].label for i in indices], dtype=np.int64)
    unmasked = LABELS.index(WITHOUT_MASK)
    for row, i in enumerate(indices):
        ref = faces.faces[int(i)]
        crop = cut_face(faces.images[ref.image], jitter_box(ref.box, rng), size, margin)
        if (pulled_mask > 0 and ref.label == unmasked and donors is not None and donors.takes(ref)
                and rng.random() < pulled_mask):
            donor = donors.pick(ref, rng)
            donor_crop = cut_face(faces.images[donor.image], jitter_box(donor.box, rng), size, margin)
            crop = pull_mask_below_nose(crop, donor_crop, margin, rng)
            labels[row] = LABELS.index(MASK_INCORRECT)
        elif occlusion > 0 and ref.label == unmasked and rng.random() < occlusion:
            crop = cover_mouth_with_hand(crop, margin, rng)
        batch[row] = augment_crop(crop, rng)
    return to_model_input(batch), labels
