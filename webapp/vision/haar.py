"""OpenCV's Haar cascade: the seed project's kind of face detector, kept as a baseline."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from webapp.vision.boxes import Detection
from webapp.vision.detector import DetectorUnavailable


class HaarDetector:
    """OpenCV's frontal-face Haar cascade: the seed project's kind of detector (baseline only)."""

    name = "haar"

    def __init__(self, min_size: int = 16) -> None:
        cascades = getattr(getattr(cv2, "data", None), "haarcascades", None)
        path = Path(cascades or "") / "haarcascade_frontalface_default.xml"
        if not cascades or not path.is_file() or not hasattr(cv2, "CascadeClassifier"):
            raise DetectorUnavailable("OpenCV Haar cascades need opencv-python-headless < 5")
        self._cascade = cv2.CascadeClassifier(str(path))
        self.min_size = min_size

    def detect(self, image: np.ndarray, tiles: bool = True) -> list[Detection]:
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        rects = self._cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                               minSize=(self.min_size, self.min_size))
        return [Detection((float(x), float(y), float(x + w), float(y + h)), 1.0)
                for x, y, w, h in (rects if len(rects) else [])]
