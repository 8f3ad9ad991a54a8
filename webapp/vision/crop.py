"""The one function that turns (image, face box) into the classifier's input.

Training imports this module too, so the margin, squaring, resizing and scaling the model
learned on are exactly the ones it is served with.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

Box = Sequence[float]  # (x0, y0, x1, y1) in pixels, x1/y1 exclusive

# Context around the face box, as a fraction of its longer side, on each side: enough to see
# the nose and chin, which is what tells a mask worn below the nose from a correct one.
DEFAULT_MARGIN = 0.2
DEFAULT_SIZE = 128


def square_region(box: Box, margin: float) -> tuple[int, int, int, int]:
    """Integer square (x0, y0, x1, y1) centred on ``box``, side = longer side * (1 + 2 margin)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, 1.0) * (1.0 + 2.0 * margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left = int(round(cx - side / 2.0))
    top = int(round(cy - side / 2.0))
    s = max(int(round(side)), 1)
    return left, top, left + s, top + s


def cut_face(image: np.ndarray, box: Box, size: int = DEFAULT_SIZE,
             margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Square ``size``x``size`` uint8 crop around ``box``; parts outside the image repeat its edge.

    Edge replication (not black) because a face at the frame border otherwise gets a black band
    the model never saw in training at that position.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    h, w = image.shape[:2]
    left, top, right, bottom = square_region(box, margin)
    cx0, cy0 = max(left, 0), max(top, 0)
    cx1, cy1 = min(right, w), min(bottom, h)
    if cx1 <= cx0 or cy1 <= cy0:
        # The region lies entirely outside the image: use the nearest edge pixel.
        cx0, cy0 = min(max(left, 0), w - 1), min(max(top, 0), h - 1)
        cx1, cy1 = cx0 + 1, cy0 + 1
    patch = image[cy0:cy1, cx0:cx1]
    pad = (cy0 - top, bottom - cy1, cx0 - left, right - cx1)
    if any(p > 0 for p in pad):
        patch = cv2.copyMakeBorder(patch, *(max(p, 0) for p in pad), cv2.BORDER_REPLICATE)
    interpolation = cv2.INTER_AREA if patch.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def to_model_input(crops: np.ndarray) -> np.ndarray:
    """uint8 RGB crops (N, S, S, 3) -> float32 in [-1, 1], MobileNetV2's ImageNet scaling."""
    x = crops.astype(np.float32)
    x *= 1.0 / 127.5  # in place: no temporaries on the frame path
    x -= 1.0
    return x


def crop_faces(image: np.ndarray, boxes: Sequence[Box], size: int = DEFAULT_SIZE,
               margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """All faces of one RGB image as one float32 batch ready for the classifier."""
    if len(boxes) == 0:
        return np.zeros((0, size, size, 3), np.float32)
    return to_model_input(np.stack([cut_face(image, b, size, margin) for b in boxes]))
