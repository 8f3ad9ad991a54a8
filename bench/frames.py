"""Realistic camera frames composed at run time from dataset images (never stored).

Each frame is one kaggle-facemask street photo scaled to fill the frame (640x480 unless
asked otherwise) as background, with N faces cut (with their surroundings) from other dataset
images pasted at sizes an entrance camera sees (60-150 px at 640x480, proportionally larger
in bigger frames), and JPEG-encoded as the browser would send it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from training.datasets import KAGGLE, MASKON, load_dataset, read_rgb
from webapp.vision.crop import cut_face


def compose_frames(data_dir: Path, faces_per_frame: int, count: int, seed: int = 0,
                   quality: int = 80, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    rng = np.random.default_rng(seed + faces_per_frame)
    kaggle = load_dataset(KAGGLE, data_dir)
    maskon = load_dataset(MASKON, data_dir)
    big = [(s, f) for s in kaggle for f in s.faces if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= 40]
    big += [(s, s.faces[0]) for s in maskon[:60]]
    frames = []
    for _ in range(count):
        bg_sample = kaggle[int(rng.integers(len(kaggle)))]
        frame = cv2.resize(read_rgb(bg_sample.path), size, interpolation=cv2.INTER_AREA)
        frame = cv2.GaussianBlur(frame, (0, 0), 12)  # background people out of focus
        for (x, y, side) in _slots(faces_per_frame, rng, *size):
            sample, face = big[int(rng.integers(len(big)))]
            frame[y:y + side, x:x + side] = cut_face(read_rgb(sample.path), face.box, side, margin=0.25)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        frames.append(buf.tobytes())
    return frames


def _slots(n: int, rng: np.random.Generator, width: int = 640, height: int = 480) -> list[tuple[int, int, int]]:
    """Non-overlapping square places for n faces in a frame."""
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    cell_w, cell_h = width // cols, height // rows
    zoom = width / 640
    slots = []
    for i in range(n):
        r, c = divmod(i, cols)
        size = int(min(rng.integers(round(60 * zoom), round(150 * zoom) + 1), cell_w - 4, cell_h - 4))
        x = c * cell_w + int(rng.integers(0, cell_w - size + 1))
        y = r * cell_h + int(rng.integers(0, cell_h - size + 1))
        slots.append((x, y, size))
    return slots


def panning_clip(data_dir: Path, seconds: float = 4.0, fps: int = 25, size: tuple[int, int] = (640, 480),
                 seed: int = 0) -> list[np.ndarray]:
    """RGB frames of a camera slowly panning and zooming over a composed scene with 3 faces:
    every frame differs, as a real webcam's do, and the faces move."""
    width, height = size
    scene = cv2.imdecode(np.frombuffer(compose_frames(data_dir, 3, 1, seed, 95, (width * 3 // 2, height * 3 // 2))[0],
                                       np.uint8), cv2.IMREAD_COLOR)
    scene = cv2.cvtColor(scene, cv2.COLOR_BGR2RGB)
    n = max(int(seconds * fps), 2)
    frames = []
    for i in range(n):
        t = i / (n - 1)
        phase = 0.5 - 0.5 * np.cos(2 * np.pi * t)  # there and back, so the clip loops smoothly
        zoom = 1.0 + 0.3 * phase
        w, h = int(scene.shape[1] / 1.5 / zoom * 1.4), int(scene.shape[0] / 1.5 / zoom * 1.4)
        x = int((scene.shape[1] - w) * phase)
        y = int((scene.shape[0] - h) * (1 - phase) / 2)
        frames.append(cv2.resize(scene[y:y + h, x:x + w], size, interpolation=cv2.INTER_AREA))
    return frames


def write_y4m(path: Path, frames: list, fps: int = 10, repeat: int = 1) -> None:
    """YUV4MPEG2 4:2:0 video (what Chromium's fake capture device plays, looping) from RGB
    arrays or encoded JPEG/PNG bytes; each frame written ``repeat`` times."""
    def rgb(frame) -> np.ndarray:
        if isinstance(frame, np.ndarray):
            return frame
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    first = rgb(frames[0])
    h, w = first.shape[:2]
    with Path(path).open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            yuv = cv2.cvtColor(rgb(frame), cv2.COLOR_RGB2YUV_I420).tobytes()
            for _ in range(repeat):
                f.write(b"FRAME\n" + yuv)
