"""Per-face latency of the mask classifier as served (TFLite, with the mirrored crop where the
model's contract asks for it) vs Keras ``predict``, and against other model folders.

    python bench/classifier.py [--model model/] [--compare runs/classifier-previous] [--runs 200]

Prints one table (median and p95 milliseconds per face, for batch 1 and 4) and the speed-up
of TFLite over Keras measured in the same run, so machine noise affects all rows alike.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from webapp.config import Settings
from webapp.vision.classifier import MaskClassifier


def per_face_ms(fn: Callable[[np.ndarray], object], batch: np.ndarray, runs: int) -> tuple[float, float]:
    for _ in range(5):  # warm-up: first calls allocate and plan
        fn(batch)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(batch)
        times.append((time.perf_counter() - t) * 1000 / len(batch))
    return float(np.median(times)), float(np.percentile(times, 95))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Settings.load().model_dir)
    p.add_argument("--compare", type=Path, nargs="*", default=[], help="other model folders (TFLite rows)")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--keras-runs", type=int, default=30, help="Keras predict is slow; fewer runs")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    rows = []
    rng = np.random.default_rng(0)
    for folder in [args.model, *args.compare]:
        probe = MaskClassifier(folder)
        size = probe.input_size
        batches = {n: rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32) for n in (1, 4)}
        modes = [(False, "still")] + ([(True, "live")] if probe.live != probe.still else [])
        for threads in (1, 2):
            clf = MaskClassifier(folder, threads=threads)
            for live, mode in modes:
                mirrored = " + mirrored" if clf.decisions(live).flip_average else ""
                for n, batch in batches.items():
                    rows.append((f"{folder.name}/ {mode} {size}px{mirrored}, TFLite {threads} "
                                 f"thread{'s' * (threads > 1)}", n,
                                 *per_face_ms(lambda b, live=live: clf.predict_proba(b, live), batch, args.runs)))
    probe = MaskClassifier(args.model)
    size = probe.input_size
    batches = {n: rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32) for n in (1, 4)}

    import keras  # only for the comparison row; serving never imports it

    model = keras.saving.load_model(args.model / "mask_classifier.keras", compile=False)
    for n, batch in batches.items():
        rows.append((f"{args.model.name}/ Keras model.predict", n,
                     *per_face_ms(lambda b: model.predict(b, verbose=0), batch, args.keras_runs)))

    print(f"ms per face; cpu cores: {os.cpu_count()}")
    print(f"| {'model and runtime':52s} | crops per call | median ms/face | p95 ms/face |")
    print(f"|{'-' * 54}|----------------|----------------|-------------|")
    for name, n, med, p95 in rows:
        print(f"| {name:52s} | {n:14d} | {med:14.3f} | {p95:11.3f} |")
    keras_b1 = next(r[2] for r in rows if "Keras" in r[0] and r[1] == 1)
    for name, n, med, _ in rows:
        if "TFLite" in name and n == 1:
            print(f"{name}, batch 1: {keras_b1 / med:.0f}x faster than Keras predict (batch 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
