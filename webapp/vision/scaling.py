"""Scaling a frame down for a model, fast enough to do on every live frame.

OpenCV's area averaging (``INTER_AREA``) is the right filter for shrinking (no aliasing), but
at a fractional factor it costs 1.3-2.5 ms on a 640x480 frame on our CPU - as much as a fifth
of the cheap detector pass. At a whole factor OpenCV takes a fast path (0.1 ms), so we average
by the largest whole factor first and cover the remaining step, less than 2x, bilinearly:
bilinear sampling only aliases beyond 2x. Measured against plain ``INTER_AREA`` on the
detector's tune images in ``tests/test_scaling.py`` and the model card's detector tables.
"""

from __future__ import annotations

import cv2
import numpy as np


def scale_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` resized to ``width`` x ``height`` (downscaling: area by whole factor, then bilinear)."""
    h, w = image.shape[:2]
    whole = min(w // width, h // height) if width and height else 0
    if whole >= 2:
        # The fast path needs exact multiples: the last < ``whole`` rows and columns are dropped
        # (under one output pixel).
        w, h = w // whole, h // whole
        image = cv2.resize(image[:h * whole, :w * whole], (w, h), interpolation=cv2.INTER_AREA)
    if (w, h) == (width, height):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
