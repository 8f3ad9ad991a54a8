"""Per-face latency of the mask classifier as served (TFLite, every network of an ensemble, with
the mirrored crop where the model's contract asks for it) vs Keras ``predict``, and against other
model folders (e.g. the model a new one replaces: ``git show``'s files in a folder).

    python bench/classifier.py [--model model/] [--compare runs/classifier-previous] [--runs 200]
    python bench/classifier.py --untrained 1.0:128 1.0:160    # + candidate backbones, before training them

``--untrained ALPHA:SIZE`` exports an ImageNet-initialised, untrained classifier of that MobileNetV2
width and input side (the cost of a forward pass does not depend on the weights), served like a
model whose still images read the mirrored crop too: it prices a candidate recipe before its
cross-validation is spent on it.

Prints one table (median and p95 milliseconds per face, for batch 1 and 4) and the speed-up of
TFLite over Keras measured in the same run, so machine noise affects all rows alike.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from webapp.config import Settings
from webapp.vision.classifier import MaskClassifier


def per_face_ms(fn: Callable[[Any], object], batch: np.ndarray | dict[int, np.ndarray],
                runs: int) -> tuple[float, float]:
    """Median and p95 ms per face of ``fn(batch)``; ``batch`` is one array of crops or, for a
    classifier, crops per input side (the faces counted once, not once per side)."""
    faces = len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)
    for _ in range(5):  # warm-up: first calls allocate and plan
        fn(batch)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(batch)
        times.append((time.perf_counter() - t) * 1000 / faces)
    return float(np.median(times)), float(np.percentile(times, 95))


def untrained_model(spec: str, scratch: Path, weights_dir: Path | None) -> Path:
    """A model folder with an untrained ``ALPHA:SIZE`` classifier whose still images read the
    mirrored crop and live video a single one (what a candidate recipe could be served as)."""
    from training.fit import build_classifier, export_classifier, install_offline_weights
    from training.recipe import Recipe

    alpha, size = spec.split(":")
    recipe = Recipe(alpha=float(alpha), size=int(size))
    install_offline_weights(weights_dir)
    folder = scratch / f"untrained-a{recipe.alpha:g}-s{recipe.size}"
    export_classifier([(build_classifier(recipe)[0], recipe)], folder,
                      {"flip_average": True, "live": {"flip_average": False}})
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Settings.load().model_dir)
    p.add_argument("--compare", type=Path, nargs="*", default=[], help="other model folders (TFLite rows)")
    p.add_argument("--untrained", nargs="*", default=[], metavar="ALPHA:SIZE",
                   help="also time untrained MobileNetV2 classifiers of these widths and input sides")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--keras-runs", type=int, default=30, help="Keras predict is slow; fewer runs")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    scratch = tempfile.TemporaryDirectory()
    untrained = [untrained_model(spec, Path(scratch.name), Settings.load().weights_dir) for spec in args.untrained]
    rows = []
    rng = np.random.default_rng(0)
    for folder in [args.model, *args.compare, *untrained]:
        probe = MaskClassifier(folder)
        sides = "+".join(str(m.input_size) for m in probe.members)
        batches = {n: {s: rng.uniform(-1, 1, (n, s, s, 3)).astype(np.float32) for s in probe.input_sizes}
                   for n in (1, 4)}
        modes = [(False, "still")] + ([(True, "live")] if probe.live != probe.still else [])
        for threads in (1, 2):
            clf = MaskClassifier(folder, threads=threads)
            for live, mode in modes:
                mirrored = " + mirrored" if clf.decisions(live).flip_average else ""
                for n, batch in batches.items():
                    rows.append((f"{folder.name}/ {mode} {sides}px{mirrored}, TFLite {threads} "
                                 f"thread{'s' * (threads > 1)}", n,
                                 *per_face_ms(lambda b, live=live: clf.predict_proba(b, live), batch, args.runs)))
            if len(clf.members) > 1 and threads == 1:  # what each network of an ensemble costs alone
                for member in clf.members:
                    rows.append((f"{folder.name}/ {member.path.name} alone, single crop, TFLite 1 thread", 1,
                                 *per_face_ms(member.raw_proba, batches[1][member.input_size], args.runs)))
    first = MaskClassifier(args.model).members[0]
    batches = {n: rng.uniform(-1, 1, (n, first.input_size, first.input_size, 3)).astype(np.float32) for n in (1, 4)}

    import keras  # only for the comparison row; serving never imports it

    keras_file = first.path.with_suffix(".keras")
    model = keras.saving.load_model(keras_file, compile=False)
    for n, batch in batches.items():
        rows.append((f"{args.model.name}/ {keras_file.name}, Keras model.predict", n,
                     *per_face_ms(lambda b: model.predict(b, verbose=0), batch, args.keras_runs)))
    tflite_b1 = per_face_ms(first.raw_proba, batches[1], args.runs)[0]

    print(f"ms per face; cpu cores: {os.cpu_count()}")
    width = max(len(r[0]) for r in rows)
    print(f"| {'model and runtime':{width}s} | crops per call | median ms/face | p95 ms/face |")
    print(f"|{'-' * (width + 2)}|----------------|----------------|-------------|")
    for name, n, med, p95 in rows:
        print(f"| {name:{width}s} | {n:14d} | {med:14.3f} | {p95:11.3f} |")
    keras_b1 = next(r[2] for r in rows if "Keras" in r[0] and r[1] == 1)
    print(f"{first.path.name} single crop, batch 1: TFLite {keras_b1 / tflite_b1:.0f}x faster than Keras predict")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
