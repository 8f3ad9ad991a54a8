"""Fine-tune MediaPipe's full-range BlazeFace on our data and write the served face detector.

Reads top to bottom like a Keras example: data, model, loss, training loop (checkpoints,
``--resume``), export to TFLite, operating threshold, report. Usage::

    python -m training.train_detector                     # shipped recipe and operating point -> runs/detector-model
    python -m training.train_detector --out model/        # ... and replace the shipped detector
    python -m training.detector_cv --name shipped-recipe --folds 4   # how that operating point was chosen
    python -m training.train_detector --cv runs/detector-cv/shipped-recipe    # ... and taken from the CV folder
    python -m training.train_detector --tune-split        # threshold from the tune split (a quick candidate)
    python -m training.train_detector --steps 40 --out runs/tiny   # a smoke run
    python -m training.train_detector --resume            # continue an interrupted run
    python -m training.train_detector --retune            # only choose the operating point again

Which data chose what (``--tune-split``): the model trains on the kaggle-facemask *fit* images (the classifier's
training split minus a tune split) plus maskedfacenet-maskon training close-ups pasted into
scenes (and, with ``--picture-share``, chandrikadeb7 training pictures boxed by MediaPipe's
BlazeFace). The operating threshold is chosen on the *tune* images (never trained on); the boxes per
close-up are counted on the pasted close-ups, or on a share kept out of pasting
(``--closeup-tune-fraction``). The validation split (``python -m training.evaluate --split
val``) is used for reporting only. By default (``--cv``) it trains on every training image and takes
its thorough pass and threshold from a cross-validation's pooled out-of-fold detections
(``training/detector_cv.py``): those the shipped detector's ``detector_metrics.json`` recorded, or a
finished cross-validation folder. The cross-validation of the shipped recipe costs four trainings
(88 min here); it is run once per recipe, not for every fit.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from training.datasets import CHANDRIKA, KAGGLE, MASKON, Sample, assign_folds, load_dataset, split_by_image
from training.detector_data import CLOSEUP_FACE, CropSampler, Scene, boxed_by_teacher, load_scenes, training_batch
from training.detector_report import METRICS_FILE
from webapp.vision.labels import WITH_MASK

log = logging.getLogger("training.train_detector")

SPLIT_SEED = 1234       # the classifier's split: validation images stay out of both models
VAL_FRACTION = 0.25
TUNE_FRACTION = 0.15    # of the training images, for the operating threshold


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from webapp.config import Settings

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="datasets folder (default: MASKWATCH_DATA)")
    p.add_argument("--out", type=Path, default=Path("runs/detector-model"),
                   help="output folder (default: runs/detector-model; the shipped detector is in "
                        f"{Settings().model_dir}/, written only when named)")
    p.add_argument("--work", type=Path, default=Path("runs/detector"),
                   help="checkpoints, training log and curves (kept for --resume)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=320, help="training crop side in pixels")
    p.add_argument("--serve-side", type=int, default=512,
                   help="training crops are scaled around this long side; the first thorough-pass side tried")
    p.add_argument("--live-side", type=int, default=256,
                   help="long side of the detector input for the cheap pass of live video (written to the contract)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--paste-prob", type=float, default=0.5, help="chance of pasting close-ups into a crop")
    p.add_argument("--closeup-max-face", type=float, default=CLOSEUP_FACE[1],
                   help="largest face side (px, in the crop's scale) a pasted close-up gets; above ~350 px, "
                        "the size of a close-up's face at the serving side, only its surroundings stay in a "
                        "crop: background, clothes and hair at the scale the served full-resolution pass sees them")
    p.add_argument("--closeup-tune-fraction", type=float, default=0.0,
                   help="share of the maskon training close-ups kept out of pasting, on which the operating "
                        "point counts boxes per close-up (0: count on the pasted ones)")
    p.add_argument("--picture-share", type=float, default=0.0,
                   help="share of pasted close-ups taken from chandrikadeb7 training pictures (masked and "
                        "unmasked faces; boxed by MediaPipe's BlazeFace) instead of maskedfacenet-maskon")
    p.add_argument("--region-blur", type=float, default=0.0,
                   help="chance of a crop getting defocus or motion blur over a random part of it")
    p.add_argument("--rare-weight", type=float, default=0.0,
                   help="draw scenes with unmasked or incorrectly masked faces 1 + this times as often")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--limit-images", type=int, help="use only this many images per dataset (smoke tests)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work")
    p.add_argument("--retune", action="store_true",
                   help="only choose the operating point again for the detector already in --out (no training)")
    p.add_argument("--cv", type=Path, metavar="FOLDER|JSON",
                   help="train on every kaggle-facemask training image (no tune split) and take the thorough pass "
                        "and threshold from this finished cross-validation of the same recipe (python -m "
                        "training.detector_cv), or from the one a detector_metrics.json recorded (default: "
                        f"{Settings().model_dir}/{METRICS_FILE}, the shipped detector's)")
    p.add_argument("--tune-split", action="store_true",
                   help="hold out the tune split and choose the operating point on it instead of --cv")
    p.add_argument("--folds", type=int, default=0,
                   help="cross-validation (python -m training.detector_cv): split the kaggle training images "
                        "into this many folds by image group and tune on --fold instead of the tune split")
    p.add_argument("--fold", type=int, default=0, help="the held-out fold (with --folds)")
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    if args.folds and not 0 <= args.fold < args.folds:
        p.error(f"--fold must be between 0 and {args.folds - 1}")
    if args.retune and (args.folds or args.cv):
        p.error("--retune re-chooses the operating point on the tune images; it takes no --folds or --cv")
    if args.folds and args.cv:
        p.error("--folds trains one fold of a cross-validation; --cv trains on every training image")
    if args.tune_split and args.cv:
        p.error("--tune-split chooses the operating point on the tune images; --cv takes it from a cross-validation")
    if not (args.cv or args.folds or args.retune or args.tune_split):
        args.cv = Settings().model_dir / METRICS_FILE
    return args


# The flags that change what the detector learns: a --cv run must share them with its cross-validation.
RECIPE_FLAGS = ("steps", "batch_size", "crop", "serve_side", "lr", "paste_prob", "closeup_max_face",
                "closeup_tune_fraction", "picture_share", "region_blur", "rare_weight", "seed")


def recipe_differences(args: argparse.Namespace, theirs: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """The recipe flags in which ``args`` differs from a cross-validation run with the training flags
    ``theirs``, or from a recorded run (``theirs``: its ``detector_metrics.json`` "run" record)."""
    if not isinstance(theirs, Mapping):
        theirs = vars(parse_args([*theirs, "--tune-split"]))
    return [f"--{k.replace('_', '-')} {getattr(args, k)} (cross-validation: {theirs.get(k)})"
            for k in RECIPE_FLAGS if getattr(args, k) != theirs.get(k)]


def recorded_cross_validation(path: Path) -> dict[str, Any]:
    """The "run" and "tuning" records of a detector whose operating point a cross-validation chose."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--cv {path}: cannot read it ({exc})") from None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("tuning"), dict) or "cv" not in recorded["tuning"]:
        raise SystemExit(f"--cv {path}: it records no cross-validation (a detector trained with --cv writes "
                         "one); give a cross-validation folder or --tune-split")
    return recorded


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow 2.21's oneDNN kernels crash (SIGSEGV) in graph mode on this model's training
    # step on our CPUs; with the plain kernels a batch of 8 crops of 320 px takes ~1 s on 2 cores.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from training.blazeface_keras import DIVISOR, FULL_RANGE_FILE, STRIDE, build_from_tflite, check_against_litert
    from webapp.config import Settings
    from webapp.vision.blazeface import blazeface_model_dir

    started = time.time()
    keras.utils.set_random_seed(args.seed)
    data_dir = Settings.load({"data_dir": args.data}).data_dir
    if args.crop % DIVISOR:
        raise SystemExit(f"--crop must be a multiple of {DIVISOR}")

    if args.retune:
        return retune(args.out, data_dir, args.limit_images, argv)
    cv_tuning = None  # the operating point a cross-validation chose, with its tables
    if args.cv and args.cv.is_dir():
        from training.detector_cv import cv_tables, finished_summary

        summary = finished_summary(args.cv)
        differences = recipe_differences(args, summary["config"]["flags"])
        cv_tuning = cv_tables(summary, args.cv)
    elif args.cv:
        recorded = recorded_cross_validation(args.cv)
        differences = recipe_differences(args, recorded["run"])
        cv_tuning = recorded["tuning"]
    if args.cv:
        if differences:
            raise SystemExit(f"{args.cv} cross-validated another recipe: " + "; ".join(differences))

    # --- Data: the split is by source image; near-duplicates share a group -------------------
    fit, tune, closeups = detector_splits(data_dir, args.limit_images, (args.fold, args.folds) if args.folds else None)
    if args.cv:  # the cross-validation chose the operating point: the tune images train too
        fit, tune = fit + tune, []
    closeups, closeup_tune = (split_by_image(closeups, args.closeup_tune_fraction, SPLIT_SEED + 1)
                              if args.closeup_tune_fraction else (closeups, closeups))
    log.info("kaggle fit %d images (%d faces), tune %d images; close-ups %d pasted, %d counted for the "
             "operating point", len(fit), sum(len(s.faces) for s in fit), len(tune), len(closeups), len(closeup_tune))
    scenes = load_scenes(fit, desc="kaggle fit")
    weights = [1.0 + args.rare_weight * any(lab != WITH_MASK for lab in sc.labels) for sc in scenes]
    pictures = picture_closeups(data_dir, args.limit_images) if args.picture_share else []
    sampler = CropSampler(scenes, load_scenes(closeups, 512, desc="close-ups"), crop=args.crop,
                          serve_side=args.serve_side, paste_prob=args.paste_prob,
                          closeup_face=(CLOSEUP_FACE[0], args.closeup_max_face),
                          scene_weights=weights if args.rare_weight else None,
                          pictures=pictures, picture_share=args.picture_share, region_blur=args.region_blur)

    # --- Model: BlazeFace full range with its own weights, every layer trainable ------------
    source = blazeface_model_dir() / FULL_RANGE_FILE
    model = build_from_tflite(source, args.crop)
    diff = check_against_litert(build_from_tflite(source), source)
    log.info("rebuilt %s: %d parameters, max |Keras - LiteRT| = %.2g at 192x192",
             source.name, model.count_params(), diff)
    if diff > 1e-3:
        raise SystemExit("the Keras rebuild does not match the original model")
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, args.steps, alpha=0.05)
    optimizer = keras.optimizers.Adam(schedule)

    # --- Loss: focal loss on the face score (ignored cells masked), L1 on the box / face size --
    @tf.function(jit_compile=False, reduce_retracing=True)
    def train_step(x, score_t, box_t, weight):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            cls, reg = focal_and_box_loss(out["score"], out["box"], score_t, box_t, weight)
            loss = cls + reg
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return cls, reg

    # --- Training loop with checkpoints -------------------------------------------------------
    args.work.mkdir(parents=True, exist_ok=True)
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    manager = tf.train.CheckpointManager(ckpt, args.work / "checkpoints", max_to_keep=2)
    log_path = args.work / "train_log.csv"
    seconds_before = 0.0
    if args.resume and manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint)
        seconds_before = _previous_seconds(args.work)
        log.info("resumed from %s at step %d", manager.latest_checkpoint, int(step))
    else:
        for stale in (log_path, args.work / "commands.txt"):
            stale.unlink(missing_ok=True)
    t0 = time.time()
    with open(log_path, "a", newline="") as fh, tqdm(total=args.steps, initial=int(step), desc="steps") as bar:
        writer = csv.writer(fh)
        if fh.tell() == 0:
            writer.writerow(["step", "score_loss", "box_loss", "lr", "seconds"])
        while int(step) < args.steps:
            # One generator per step: a resumed run draws exactly the crops it would have drawn.
            rng = np.random.default_rng([args.seed, int(step)])
            x, t = training_batch(sampler, args.batch_size, rng, STRIDE)
            cls, reg = train_step(tf.constant(x), tf.constant(t["score"]), tf.constant(t["box"]),
                                  tf.constant(t["weight"]))
            step.assign_add(1)
            s = int(step)
            if s % 10 == 0 or s == args.steps:
                elapsed = seconds_before + time.time() - t0
                writer.writerow([s, f"{float(cls):.5f}", f"{float(reg):.5f}",
                                 f"{float(schedule(s)):.6g}", f"{elapsed:.1f}"])
                bar.set_postfix(score=f"{float(cls):.3f}", box=f"{float(reg):.3f}")
            if s % args.checkpoint_every == 0 or s == args.steps:
                fh.flush()
                manager.save(checkpoint_number=s)
                (args.work / "seconds.txt").write_text(f"{seconds_before + time.time() - t0:.1f}\n")
            bar.update(1)
    train_seconds = seconds_before + time.time() - t0

    # --- Export, operating threshold on the tune images, report -------------------------------
    from training.detector_report import choose_operating_point, export_detector, write_detector_card

    args.out.mkdir(parents=True, exist_ok=True)
    export_detector(model, args.out, still_side=args.serve_side, live_side=args.live_side)
    trained_on = closeup_tune is closeups
    if cv_tuning is None:
        tuning = choose_operating_point(args.out, tune, closeup_tune, closeups_trained_on=trained_on)
    else:
        from training.detector_cv import apply_operating_point

        tuning = apply_operating_point(args.out, cv_tuning, closeup_tune, closeups_trained_on=trained_on)
    run = {
        "commands": _commands(args.work, argv),
        "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size, "crop": args.crop,
        "serve_side": args.serve_side, "lr": args.lr, "paste_prob": args.paste_prob,
        "closeup_max_face": args.closeup_max_face, "closeup_tune_fraction": args.closeup_tune_fraction,
        "rare_weight": args.rare_weight, "picture_share": args.picture_share, "picture_images": len(pictures),
        "region_blur": args.region_blur, **({"fold": args.fold, "folds": args.folds} if args.folds else {}),
        **({"cv": str(args.cv)} if args.cv else {}),
        "train_seconds": round(train_seconds, 1),
        # this invocation's time outside training steps: loading data, the Keras check, export, threshold
        "other_seconds": round(time.time() - started - (train_seconds - seconds_before), 1),
        "fit_images": len(fit), "fit_faces": sum(len(s.faces) for s in fit), "tune_images": len(tune),
        "closeup_images": len(closeups), "rebuild_max_abs_diff": diff,
        "tensorflow": tf.__version__, "keras": keras.__version__,
    }
    write_detector_card(args.out, run, tuning, log_path)
    log.info("wrote %s (side %d, threshold %.2f: %s precision %.3f, recall %.3f) in %.0f s", args.out,
             tuning["still_side"], tuning["threshold"], "out-of-fold" if args.cv else "tune", tuning["precision"],
             tuning["recall"], time.time() - started)
    return 0


def retune(out: Path, data_dir: Path, limit: int | None, argv: list[str] | None) -> int:
    """Choose the thorough pass and threshold again for the detector in ``out``, on the same tune
    images and close-ups as its training run, when the choices offered change (e.g. the mirrored
    pass); the training record stays and the command joins its list."""
    from training.detector_report import choose_operating_point, write_detector_card

    if not (out / METRICS_FILE).is_file():
        raise SystemExit(f"no trained detector in {out} (its {METRICS_FILE} is missing): train one first")
    run = json.loads((out / METRICS_FILE).read_text())["run"]
    if run.get("cv"):
        raise SystemExit(f"{out}: its operating point came from the cross-validation {run['cv']} and it trained on "
                         "the tune images; train it again with --cv instead")
    _, tune, closeups = detector_splits(data_dir, limit)
    fraction = run.get("closeup_tune_fraction", 0.0)
    closeup_tune = split_by_image(closeups, fraction, SPLIT_SEED + 1)[1] if fraction else closeups
    started = time.time()
    tuning = choose_operating_point(out, tune, closeup_tune, closeups_trained_on=not fraction)
    run["commands"] = run["commands"] + ["python -m training.train_detector "
                                         + " ".join(sys.argv[1:] if argv is None else argv)]
    run["retune_seconds"] = round(time.time() - started, 1)
    write_detector_card(out, run, tuning, log_path=None)
    log.info("%s: thorough pass %d px%s, threshold %.2f (%.2f for faces >= 32 px; tune precision %.3f, "
             "recall %.3f) in %.0f s", out, tuning["still_side"], " + mirror image" if tuning["still_mirror"] else "",
             tuning["threshold"], tuning["threshold_large"], tuning["precision"], tuning["recall"],
             time.time() - started)
    return 0


def focal_and_box_loss(score, box, score_t, box_t, weight, alpha: float = 0.25, gamma: float = 2.0):
    """(score loss, box loss), each summed over cells and divided by the number of positives."""
    import tensorflow as tf

    positive = tf.cast(score_t > 0.5, tf.float32)
    valid = tf.cast(score_t > -0.5, tf.float32)
    n_pos = tf.maximum(tf.reduce_sum(positive), 1.0)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=positive, logits=score)
    p = tf.sigmoid(score)
    p_t = positive * p + (1 - positive) * (1 - p)
    alpha_t = positive * alpha + (1 - positive) * (1 - alpha)
    cls = tf.reduce_sum(alpha_t * (1 - p_t) ** gamma * ce * valid) / n_pos
    reg = tf.reduce_sum(tf.abs(box - box_t) * weight * positive) / n_pos
    return cls, reg


def detector_splits(data_dir: Path, limit: int | None = None, fold: tuple[int, int] | None = None):
    """(kaggle fit samples, kaggle tune samples, maskon training close-ups).

    The validation quarter is exactly the classifier's (same seed and fraction), so neither
    model ever trains on the images the README reports on. ``fold`` = (k, folds) holds out fold
    k of the training images instead of the tune split (``training/detector_cv.py``).
    """
    kaggle = load_dataset(KAGGLE, data_dir)
    train, _ = split_by_image(kaggle, VAL_FRACTION, SPLIT_SEED)
    fit, tune = fit_and_tune(train) if fold is None else fold_split(train, *fold)
    try:
        closeups, _ = split_by_image(load_dataset(MASKON, data_dir), VAL_FRACTION, SPLIT_SEED)
    except FileNotFoundError as exc:
        log.warning("%s: training without close-ups", exc)
        closeups = []
    if limit:
        fit, tune, closeups = fit[:limit], tune[:max(1, limit // 4)], closeups[:limit]
    return fit, tune, closeups


def fit_and_tune(train: Sequence[Sample], seed: int = SPLIT_SEED) -> tuple[list[Sample], list[Sample]]:
    """The kaggle-facemask training images the detector trains on, and those held out to tune it."""
    return split_by_image(train, TUNE_FRACTION, seed + 1)


def fold_split(train: Sequence[Sample], k: int, folds: int, seed: int = SPLIT_SEED
               ) -> tuple[list[Sample], list[Sample]]:
    """The kaggle-facemask training images outside fold ``k`` of ``folds`` (by image group, near
    duplicates together, rare labels dealt round-robin), and those in it."""
    fold_of = assign_folds(train, folds, seed)
    return ([s for s, f in zip(train, fold_of) if f != k], [s for s, f in zip(train, fold_of) if f == k])


def picture_closeups(data_dir: Path, limit: int | None = None) -> list[Scene]:
    """chandrikadeb7's training pictures (the classifier's split: its validation quarter stays out)
    with the face boxed by MediaPipe's BlazeFace; pictures it cannot box with confidence are left out."""
    from webapp.vision.detector import create_detector

    try:
        pictures, _ = split_by_image(load_dataset(CHANDRIKA, data_dir), VAL_FRACTION, SPLIT_SEED)
    except FileNotFoundError as exc:
        log.warning("%s: training without face pictures", exc)
        return []
    pictures = pictures[:limit] if limit else pictures
    boxed = boxed_by_teacher(load_scenes(pictures, 512, desc="pictures"),
                             create_detector("blazeface-short-full", threads=os.cpu_count() or 1))
    log.info("chandrikadeb7: %d of %d training pictures boxed by the teacher", len(boxed), len(pictures))
    return boxed


def _commands(work: Path, argv: list[str] | None) -> list[str]:
    """Every invocation that built this run (a resumed run lists the original command too)."""
    command = "python -m training.train_detector " + " ".join(sys.argv[1:] if argv is None else argv)
    with open(work / "commands.txt", "a") as fh:
        fh.write(command.strip() + "\n")
    return (work / "commands.txt").read_text().splitlines()


def _previous_seconds(work: Path) -> float:
    f = work / "seconds.txt"
    return float(f.read_text()) if f.exists() else 0.0


if __name__ == "__main__":
    raise SystemExit(main())
