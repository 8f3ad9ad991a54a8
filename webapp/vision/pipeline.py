"""bytes -> validated -> decoded -> faces detected -> cropped -> classified in one batch.

Everything a camera or a user sends is untrusted: the size, the format (by magic bytes, not
by name), the pixel dimensions (read from the header before any pixel is decoded, so a
60000x60000 PNG costs nothing) and completeness are checked first, and each problem raises a
:class:`FrameError` whose ``code`` is what the Socket.IO ``frame_error`` event carries.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Collection

import cv2
import numpy as np
from PIL import Image

from webapp.vision.classifier import MaskClassifier
from webapp.vision.detector import FaceDetector

if TYPE_CHECKING:
    from webapp.config import Settings

MAX_SIDE = 4096
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
FRAME_FORMATS = frozenset({"JPEG", "PNG"})
FILE_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP"})

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"RIFF", "WEBP"),  # checked further below: RIFF....WEBP
    (b"BM", "BMP"),
)


class FrameError(Exception):
    """A frame or image that cannot be processed; ``code`` is machine-readable."""

    code = "bad_image"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TooLarge(FrameError):
    code = "too_large"


class NotAnImage(FrameError):
    code = "not_an_image"


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the image as sent
    label: str
    score: float
    detector_score: float = 0.0
    unsure: bool = False  # calibrated score below the model's threshold: shown grey, not counted
    track: int | None = None  # the camera's track id (live video only)


@dataclass(frozen=True)
class FrameResult:
    width: int
    height: int
    faces: list[Face]
    ms: dict[str, float] = field(default_factory=dict)  # decode, detect, classify, total

    def to_dict(self) -> dict:
        """The JSON shape of the contract (boxes rounded to 0.1 px, scores to 4 digits).

        ``score`` is the classifier's calibrated probability of ``label``, ``det_score`` the face
        detector's confidence; AP ranks detections by ``score * det_score`` (``training.evaluate``).
        ``unsure`` faces are below the model's confidence threshold and are never counted;
        ``track`` (live video only) follows one person across frames.
        """
        def face(f: Face) -> dict:
            out = {"box": [round(v, 1) for v in f.box], "label": f.label, "score": round(f.score, 4),
                   "det_score": round(f.detector_score, 4), "unsure": f.unsure}
            return out if f.track is None else {**out, "track": f.track}

        return {
            "width": self.width, "height": self.height,
            "faces": [face(f) for f in self.faces],
            "ms": {k: round(v, 2) for k, v in self.ms.items()},
        }


def sniff_format(data: bytes) -> str | None:
    """Image format from the first bytes, or ``None``."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            if fmt == "WEBP" and data[8:12] != b"WEBP":
                return None
            return fmt
    return None


def check_image_bytes(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES, max_side: int = MAX_SIDE,
                      formats: Collection[str] = FRAME_FORMATS, hint: str = "") -> tuple[str, int, int]:
    """(format, width, height) of acceptable image bytes, without decoding pixels.

    Thread-safe (the inference workers and socket handlers call it side by side): Pillow's
    decompression-bomb *error* is caught, and its warning band (below our ``max_side`` check
    anyway) is left alone rather than filtered through the process-global warnings state.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise NotAnImage(f"expected image bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise TooLarge(f"image is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB{hint}")
    if not data:
        raise NotAnImage("empty image")
    fmt = sniff_format(data)
    if fmt is None or fmt not in formats:
        raise NotAnImage(f"not a {' or '.join(sorted(formats))} image"
                         + (f" (found {fmt})" if fmt else ""))
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            width, height = im.size
    except Image.DecompressionBombError:
        raise TooLarge(f"{fmt} header claims more pixels than {max_side}x{max_side}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise NotAnImage(f"unreadable {fmt} header: {exc}") from None
    if width > max_side or height > max_side:
        raise TooLarge(f"image is {width}x{height} px; at most {max_side} px a side")
    if width < 1 or height < 1:
        raise NotAnImage("image has no pixels")
    # Complete = an end-of-image marker after the last start-of-scan; some cameras and editors
    # append bytes (padding, trailers) after it, which decoders ignore.
    if fmt == "JPEG" and data.rfind(b"\xff\xd9") < max(data.rfind(b"\xff\xda"), 2):
        raise NotAnImage("truncated JPEG (no end-of-image marker)")
    if fmt == "PNG" and b"IEND" not in data[-16:]:
        raise NotAnImage("truncated PNG (no IEND chunk)")
    return fmt, width, height


def decode_pixels(data: bytes) -> np.ndarray:
    """Bytes already checked by ``check_image_bytes`` -> HxWx3 uint8 RGB."""
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise NotAnImage("the image data is corrupt and could not be decoded")
    return rgb


def decode_image(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES, max_side: int = MAX_SIDE,
                 formats: Collection[str] = FRAME_FORMATS) -> np.ndarray:
    """Untrusted bytes -> checked -> HxWx3 uint8 RGB."""
    check_image_bytes(data, max_bytes, max_side, formats)
    return decode_pixels(data)


def build_pipeline(settings: "Settings", sharing: int = 1) -> "Pipeline":
    """The served pipeline, as configured.

    ``sharing`` is how many pipelines run side by side (the server's inference workers): unless
    ``detector_threads`` is set, the detector gets the CPU cores divided among them, so one
    image at a time (``maskwatch detect``, evaluation) uses every core and N workers one each.
    """
    from webapp.vision.classifier import MaskClassifier
    from webapp.vision.detector import create_detector

    threads = settings.detector_threads or max(1, (os.cpu_count() or 1) // max(sharing, 1))
    # The classifier first: a model folder without labels.json is the first problem to report.
    classifier = MaskClassifier(settings.model_dir, settings.classifier_threads)
    return Pipeline(create_detector(settings.detector, threads, settings.model_dir), classifier,
                    max_bytes=settings.max_image_bytes)


class Pipeline:
    """Detector + classifier. Stateless per call; the models inside serialise themselves."""

    def __init__(self, detector: FaceDetector, classifier: MaskClassifier,
                 max_bytes: int = DEFAULT_MAX_BYTES, min_face: int = 8) -> None:
        self.detector = detector
        self.classifier = classifier
        self.max_bytes = max_bytes
        self.min_face = min_face

    def process(self, data: bytes, formats: Collection[str] = FRAME_FORMATS, tiles: bool = True,
                live: bool = False) -> FrameResult:
        """Run the whole pipeline on encoded image bytes."""
        t0 = time.perf_counter()
        image = decode_image(data, self.max_bytes, MAX_SIDE, formats)
        return self.process_image(image, t0=t0, tiles=tiles, live=live)

    def process_image(self, image: np.ndarray, t0: float | None = None, tiles: bool = True,
                      live: bool = False) -> FrameResult:
        """Run detection and classification on a decoded RGB image (``live``: a camera frame,
        classified with the model's live-video decisions)."""
        t_start = time.perf_counter()
        t0 = t_start if t0 is None else t0
        detections = [d for d in self.detector.detect(image, tiles=tiles)
                      if min(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= self.min_face]
        t_detect = time.perf_counter()
        predictions = self.classifier.classify(self.classifier.crop(image, [d.box for d in detections]), live=live)
        t_end = time.perf_counter()
        faces = [Face(d.box, p.label, p.score, d.score, p.unsure) for d, p in zip(detections, predictions)]
        ms = {"decode": (t_start - t0) * 1000, "detect": (t_detect - t_start) * 1000,
              "classify": (t_end - t_detect) * 1000, "total": (t_end - t0) * 1000}
        return FrameResult(image.shape[1], image.shape[0], faces, ms)
