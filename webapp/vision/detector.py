"""Face detectors behind one small interface, chosen by name in the settings (the registry).

``trained`` is ours (``trained_detector.py``, the default); ``blazeface*`` are MediaPipe's models
and the earlier ensemble (``blazeface.py``); ``haar`` is OpenCV's cascade, the seed-style
baseline (``haar.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from webapp.vision.boxes import Detection


class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray, tiles: bool = True) -> list[Detection]:
        """Faces in an HxWx3 uint8 RGB image; ``tiles=False`` asks for the cheap pass only."""


class DetectorUnavailable(RuntimeError):
    """A detector's model files or library are not installed."""


def _blazeface(name: str, **passes: object) -> Callable[[int], FaceDetector]:
    def build(threads: int) -> FaceDetector:
        from webapp.vision.blazeface import BlazeFaceEnsemble
        return BlazeFaceEnsemble(name, threads=threads, **passes)
    return build


def _haar(threads: int) -> FaceDetector:
    from webapp.vision.haar import HaarDetector
    return HaarDetector()


# The registry: name -> builder(threads); "trained" is built from the model folder in
# ``create_detector``. Builders import their module only when chosen.
_BUILDERS: dict[str, Callable[[int], FaceDetector]] = {
    "blazeface": _blazeface("blazeface", short=True, full=True, tiles=2),
    "blazeface-short": _blazeface("blazeface-short", short=True, full=False),
    "blazeface-full": _blazeface("blazeface-full", short=False, full=True),
    "blazeface-short-full": _blazeface("blazeface-short-full", short=True, full=True),
    "blazeface-tiles": _blazeface("blazeface-tiles", short=False, full=True, tiles=2),
    "haar": _haar,
}
DETECTORS: tuple[str, ...] = ("trained", *_BUILDERS)


def create_detector(name: str = "blazeface", threads: int = 1, model_dir: Path | None = None) -> FaceDetector:
    """Build a detector by its settings name (see ``DETECTORS``); ``trained`` reads ``model_dir``."""
    if name == "trained":
        from webapp.vision.trained_detector import TrainedDetector

        if model_dir is None:
            raise ValueError("the trained detector needs the model folder")
        return TrainedDetector(model_dir, threads)
    if name not in _BUILDERS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return _BUILDERS[name](threads)
