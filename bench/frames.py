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
