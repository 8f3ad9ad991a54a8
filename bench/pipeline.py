"""Per-frame latency of the served pipeline on 640x480 frames with 1, 3 and 8 faces (and 1280x720).

    MASKWATCH_DATA=... python bench/pipeline.py [--detectors trained blazeface] [--frames 20] [--repeats 5]

Every detector named runs in the same run, so rows compare (the machine is shared and noisy).
In the same run, a seed-style baseline: OpenCV's Haar cascade and Keras ``model.predict`` on
224 px crops of a MobileNetV2 (α 1.0) classifier - the approach of the project maskwatch
replaced. The baseline's classifier head is untrained: it stands in for timing only.
Prints median and p95 of decode / detect / classify / total, and the speed-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.frames import compose_frames  # noqa: E402
from webapp.config import Settings  # noqa: E402
from webapp.session import CameraSession  # noqa: E402
from webapp.stats import CameraStats  # noqa: E402
from webapp.tracker import FaceTracker  # noqa: E402
from webapp.vision.crop import crop_faces  # noqa: E402
from webapp.vision.detector import DETECTORS  # noqa: E402
from webapp.vision.haar import HaarDetector  # noqa: E402
from webapp.vision.pipeline import build_pipeline, decode_image  # noqa: E402

STAGES = ("decode", "detect", "classify", "total")
CAMERA_FPS = 25


def seed_style(keras):
    """Haar cascade + Keras predict on 224 px crops, timed per stage like the pipeline."""
    detector = HaarDetector()
    backbone = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False,
                                              weights="imagenet", pooling="avg")
    head = keras.layers.Dense(3, activation="softmax")(backbone.output)
    model = keras.Model(backbone.input, head)

    def run(data: bytes) -> dict[str, float]:
        t0 = time.perf_counter()
        image = decode_image(data)
        t1 = time.perf_counter()
        boxes = [d.box for d in detector.detect(image)]
        t2 = time.perf_counter()
        if boxes:
            model.predict(crop_faces(image, boxes, 224, 0.2), verbose=0)
        t3 = time.perf_counter()
        return {"decode": (t1 - t0) * 1e3, "detect": (t2 - t1) * 1e3, "classify": (t3 - t2) * 1e3,
                "total": (t3 - t0) * 1e3}
    return run


def measure(run, frames: list[bytes], repeats: int) -> dict[str, tuple[float, float]]:
    for f in frames[:3]:
        run(f)  # warm-up
    samples = {s: [] for s in STAGES}
    for _ in range(repeats):
        for f in frames:
            ms = run(f)
            for s in STAGES:
                samples[s].append(ms[s])
    return {s: (float(np.median(v)), float(np.percentile(v, 95))) for s, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--detectors", nargs="+", default=["trained", "blazeface"], choices=DETECTORS)
    p.add_argument("--frames", type=int, default=20, help="distinct frames per face count")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--faces", type=int, nargs="+", default=[1, 3, 8])
    p.add_argument("--hd", action=argparse.BooleanOptionalAction, default=True,
                   help="also 1280x720 frames with 3 faces")
    p.add_argument("--no-baseline", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    settings = Settings.load()
    if not (settings.data_dir / "kaggle-facemask").is_dir():
        raise SystemExit(f"datasets not found under {settings.data_dir}; set MASKWATCH_DATA")
    # The server runs one pipeline per core, each detector on one thread; a still image
    # (maskwatch detect) gets one pipeline with every core.
    workers = settings.workers or os.cpu_count() or 1
    every = settings.thorough_every_s
    configs = {}
    for name in args.detectors:
        det = dataclasses.replace(settings, detector=name)
        served_pipeline = build_pipeline(det, sharing=workers)
        pipeline = build_pipeline(det)

        def scheduled(served_pipeline=served_pipeline, frames=itertools.count()):
            # A camera sending CAMERA_FPS frames a second, scheduled by the server's own rule.
            session = CameraSession("bench", "bench", FaceTracker(), CameraStats("bench", "bench", 0.0))
            return lambda d: served_pipeline.process(
                d, tiles=session.thorough_due(next(frames) / CAMERA_FPS, every), live=True).ms
        configs[f"{name}: live as served (thorough pass every {every:g} s at {CAMERA_FPS} frames/s, "
                f"1 of {workers} workers)"] = scheduled()
        configs[f"{name}: cheap pass only (1 thread)"] = (
            lambda d, served_pipeline=served_pipeline: served_pipeline.process(d, tiles=False, live=True).ms)
        configs[f"{name}: still images (thorough pass, every core)"] = (
            lambda d, pipeline=pipeline: pipeline.process(d).ms)
    base = "seed-style (Haar + Keras predict 224 px)"
    if not args.no_baseline:
        import keras

        from training.fit import install_offline_weights
        install_offline_weights(settings.weights_dir)  # the baseline's ImageNet backbone, offline
        configs[base] = seed_style(keras)

    sizes = [((640, 480), n) for n in args.faces] + ([((1280, 720), 3)] if args.hd else [])
    results = {}
    for size, n in sizes:
        frames = compose_frames(settings.data_dir, n, args.frames, size=size)
        for name, run in configs.items():
            results[(name, size, n)] = measure(run, frames, args.repeats if name != base else 1)

    print(f"JPEG frames, {args.frames} per face count; ms median / p95; {os.cpu_count()} cores")
    print("| pipeline | frame | faces | " + " | ".join(STAGES) + " |")
    print("|---|---|---|" + "---|" * len(STAGES))
    for (name, size, n), r in results.items():
        print(f"| {name} | {size[0]}x{size[1]} | {n} | "
              + " | ".join(f"{r[s][0]:.1f} / {r[s][1]:.1f}" for s in STAGES) + " |")
    vga = (640, 480)
    if not args.no_baseline and 3 in args.faces:
        for name in configs:
            if name != base:
                ratio = results[(base, vga, 3)]["total"][0] / results[(name, vga, 3)]["total"][0]
                print(f"640x480, 3 faces: {name} is {ratio:.1f}x faster than the seed-style baseline (median total)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
