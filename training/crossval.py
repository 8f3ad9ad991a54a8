"""5-fold cross-validation of a classifier recipe on the development images.

Model selection on one validation split fits its noise (25 mask_incorrect faces: one face moves
recall by 0.04), so every candidate recipe is trained k times, each time with one fold of the
development images held out, and scored on that fold with the served TFLite file. The
out-of-fold predictions of all faces then give the mean ± std over folds, bootstrap intervals,
the temperature that calibrates the scores and the decision rule, all without touching the
validation split that ``training.train`` reports on at the end.

    python -m training.crossval --name base
    python -m training.crossval --name occlusion --occlusion 0.3 --label-smoothing 0.1
    python -m training.crossval --name base --resume      # skips the folds already written

Writes ``runs/cv/<name>/fold<k>.npz`` (out-of-fold probabilities, plain and horizontally
flipped) and ``runs/cv/<name>/cv.json`` (the summary ``training.cv_report`` compares).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from training.datasets import ALL_DATASETS, KAGGLE, Sample, assign_folds, limit_per_source, load_all, split_by_image
from training.faces import FaceSet
from training.fit import export_classifier, fit_classifier, install_offline_weights
from training.metrics import macro_f1
from training.oof import load_folds, summarise
from training.recipe import Recipe
from webapp.config import Settings
from webapp.vision.classifier import MaskClassifier
from webapp.vision.crop import to_model_input

log = logging.getLogger("training.crossval")

# What makes two CV runs the same run (a folder holds one; training.train names its folder by it).
RUN_KEYS = ("recipe", "folds", "datasets", "limit_images")
DEV_SPLIT_SEED = 1234  # the development / validation split is the shipped model's (training.train)
VAL_FRACTION = 0.25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="candidate name (folder under --work)")
    p.add_argument("--work", type=Path, default=Path("runs/cv"))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--only-folds", type=int, nargs="+", help="train only these folds (to share work)")
    p.add_argument("--resume", action="store_true", help="keep folds already written")
    p.add_argument("--data", type=Path, help="datasets folder (default: MASKWATCH_DATA)")
    p.add_argument("--weights", type=Path, help="Keras MobileNetV2 .h5 files (default: MASKWATCH_WEIGHTS)")
    p.add_argument("--datasets", nargs="+", default=list(ALL_DATASETS), choices=ALL_DATASETS)
    p.add_argument("--limit-images", type=int, help="only this many images per dataset (smoke tests)")
    Recipe.add_arguments(p)
    return p.parse_args(argv)


def load_splits(data_dir: Path, datasets: list[str], limit: int | None = None
                ) -> tuple[list[Sample], list[Sample]]:
    """(development, validation) images: the validation split is the shipped model's."""
    samples = load_all(data_dir, datasets)
    if not samples:
        raise SystemExit(f"no dataset found under {data_dir}; set MASKWATCH_DATA (see README)")
    dev, val = split_by_image(samples, VAL_FRACTION, DEV_SPLIT_SEED)
    return (limit_per_source(dev, limit), limit_per_source(val, limit)) if limit else (dev, val)


def development_faces(dev: list[Sample], folds: int, seed: int) -> tuple[FaceSet, np.ndarray]:
    """Every face of the development images, and the fold of each face from its image group
    (see ``datasets.assign_folds``)."""
    fold_of = {(s.source, s.group): k for s, k in zip(dev, assign_folds(dev, folds, seed))}
    faces = FaceSet(dev, desc="development images")
    return faces, np.array([fold_of[(f.source, f.group)] for f in faces.faces], dtype=np.int64)


def run_fold(faces: FaceSet, fold_of: np.ndarray, k: int, recipe: Recipe, out: Path) -> None:
    """Train on every fold but ``k``, score fold ``k`` with the exported TFLite file."""
    held = fold_of == k
    test = faces.subset(held)
    crops = test.crops(recipe.size, recipe.margin)
    y = test.labels
    kaggle = test.sources == KAGGLE

    def on_epoch(epoch: int, model: keras.Model) -> dict[str, float]:
        probs = model.predict(to_model_input(crops), batch_size=128, verbose=0)
        return {"fold_kaggle_macro_f1": macro_f1(y[kaggle], probs[kaggle].argmax(1)),
                "fold_macro_f1": macro_f1(y, probs.argmax(1))}

    started = time.time()
    model, history = fit_classifier(faces.subset(~held), recipe, on_epoch)
    with tempfile.TemporaryDirectory() as tmp:
        export_classifier([(model, recipe)], Path(tmp))
        served = MaskClassifier(Path(tmp))
        probs = served.raw_proba({recipe.size: to_model_input(crops)})
        flipped = served.raw_proba({recipe.size: to_model_input(np.ascontiguousarray(crops[:, :, ::-1]))})
    np.savez_compressed(
        out / f"fold{k}.npz", probs=probs, probs_flip=flipped, labels=y, sources=test.sources,
        groups=test.groups, short_sides=test.short_sides, fold=np.full(len(y), k),
        history=json.dumps(history), seconds=time.time() - started)
    log.info("fold %d written (%.0f s)", k, time.time() - started)


def run_crossval(faces: FaceSet, fold_of: np.ndarray, recipe: Recipe, out: Path, config: dict,
                 only_folds: list[int] | None = None, resume: bool = True) -> dict | None:
    """Train and score the missing folds; the summary (also ``out/cv.json``) once all are done.

    A folder keeps the folds of one recipe only: reusing it for another is refused.
    """
    folds = int(config["folds"])
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "config.json"
    if config_file.exists():
        previous = json.loads(config_file.read_text())
        previous["recipe"] = Recipe.normalised(previous["recipe"])
        same = all(previous.get(k) == config.get(k) for k in RUN_KEYS)
        if not same:
            raise SystemExit(f"{out} holds folds of another recipe or data; use another --name")
        if not resume and any(out.glob("fold*.npz")):
            raise SystemExit(f"{out} already holds folds; pass --resume to continue or use another --name")
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    for k in only_folds or range(folds):
        if (out / f"fold{k}.npz").exists():
            log.info("fold %d already done", k)
            continue
        log.info("fold %d of %d: %d training faces, %d held out", k + 1, folds,
                 int((fold_of != k).sum()), int((fold_of == k).sum()))
        run_fold(faces, fold_of, k, recipe, out)
    if not all((out / f"fold{k}.npz").exists() for k in range(folds)):
        return None
    summary = summarise(load_folds(out, folds), config)
    (out / "cv.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("wrote %s", out / "cv.json")
    return summary


def start_run(args: argparse.Namespace, program: str, argv: list[str] | None
              ) -> tuple[Settings, Recipe, dict]:
    """Logging, settings, offline backbone weights, the recipe, and the run's config record
    (recipe, folds, data and the command that reproduces it) for a classifier run."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.load({"data_dir": args.data, "weights_dir": args.weights})
    install_offline_weights(settings.weights_dir)
    recipe = Recipe.from_args(args)
    config = {"recipe": recipe.as_dict(), "folds": args.folds, "datasets": args.datasets,
              "limit_images": args.limit_images,
              "command": f"python -m {program} " + " ".join(sys.argv[1:] if argv is None else argv)}
    return settings, recipe, config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings, recipe, config = start_run(args, "training.crossval", argv)
    dev, _ = load_splits(settings.data_dir, args.datasets, args.limit_images)
    faces, fold_of = development_faces(dev, args.folds, recipe.seed)
    run_crossval(faces, fold_of, recipe, args.work / args.name, config, args.only_folds, args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
