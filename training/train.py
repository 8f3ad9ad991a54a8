"""Train the 3-class face-mask classifier (MobileNetV2, ImageNet weights) the way it ships.

Reads top to bottom: data, cross-validation of the recipe, the serving decisions taken from the
out-of-fold predictions, the final model on all development images, export, and the report on
the validation split (held out of everything above). Usage::

    python -m training.train                  # the shipped ensemble -> runs/classifier/
    python -m training.train --out model/     # ... and replace the shipped model
    python -m training.train --cv runs/cv/s224 runs/cv/a100-s160 --out runs/x   # reuse finished CV runs
    python -m training.train --ensemble       # one network only (the recipe flags)

The shipped model is an ensemble of two networks: the recipe given by the flags (MobileNetV2
α 0.35 at 224 px) and the same recipe at α 1.0 and 160 px (``--ensemble alpha=1.0,size=160``);
their mean softmax output decided better in cross-validation than either alone
(``training.ensemble_cv``). Each network is cross-validated, the ensemble's decisions are taken
from the members' out-of-fold predictions, then each is fitted on all development images.
A finished final fit is kept in its recipe's CV folder (``final.keras``), so a re-run after a
stop trains only what is missing.

Which data chose what: the epoch count, the recipe, the temperature, the decision rule and
flip averaging were chosen on out-of-fold predictions of the development images
(``training.crossval``); the validation split (25 % of every dataset's image groups, seed 1234,
the one ``training.evaluate --split val`` and the detector report use) only reports.
Dataset and weight locations come from settings (``MASKWATCH_DATA``, ``MASKWATCH_WEIGHTS``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import keras
import numpy as np

from training.crossval import RUN_KEYS, development_faces, load_splits, run_crossval, start_run
from training.datasets import ALL_DATASETS, KAGGLE, describe_split, face_counts
from training.ensemble_cv import crossval_ensemble
from training.faces import FaceSet
from training.fit import export_classifier, fit_classifier
from training.metrics import SIZE_BUCKETS, classifier_section, format_report, size_bucket
from training.oof import (
    UNSURE_BELOW,
    better_rule,
    candidate_summary,
    expected_calibration_error,
    may_mirror,
    reliability,
    served_variant,
)
from training.recipe import Recipe
from webapp.vision.classifier import LABELS_FILE, MaskClassifier, Member
from webapp.vision.labels import LABELS

log = logging.getLogger("training.train")

# The shipped ensemble's second network: the first's recipe with a wider backbone at a smaller input.
DEFAULT_SECOND_MEMBER = "alpha=1.0,size=160"

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="datasets folder (default: MASKWATCH_DATA)")
    p.add_argument("--weights", type=Path,
                   help="folder with Keras' MobileNetV2 .h5 files to install into $KERAS_HOME/models")
    p.add_argument("--datasets", nargs="+", default=list(ALL_DATASETS), choices=ALL_DATASETS)
    p.add_argument("--out", type=Path, default=Path("runs/classifier"),
                   help="output folder (default: runs/classifier; model/ replaces the shipped model)")
    p.add_argument("--cv", type=Path, nargs="+", help="cross-validation folder of each network, in order "
                   "(default: runs/cv/recipe-<hash>; finished folds are reused, missing ones trained)")
    p.add_argument("--ensemble", nargs="*", default=[DEFAULT_SECOND_MEMBER], metavar="FIELD=VALUE,...",
                   help="further networks of the ensemble, each the recipe of the flags with these changes "
                   f"(default: {DEFAULT_SECOND_MEMBER}, the shipped ensemble); --ensemble alone: one network")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--compare", type=Path, nargs="*", default=[],
                   help="other CV folders (cv.json) to list in the model card's candidate table")
    p.add_argument("--limit-images", type=int, help="use only this many images per dataset (smoke tests)")
    p.add_argument("--serving-only", action="store_true",
                   help="only re-derive the serving decisions of the model in --out from its finished "
                   "cross-validation (--cv: the ensemble's folder, or the single network's)")
    Recipe.add_arguments(p)
    return p.parse_args(argv)


def serving_decisions(cv: dict) -> dict:
    """What the server does with the model's output, chosen on out-of-fold predictions:
    flip averaging (single networks only: ``oof.may_mirror``) and class offsets only where they
    raise the mean kaggle-facemask macro-F1.

    Live video reads a single crop even when still images are read mirrored too: it halves the
    classifier's cost per frame, and the tracker's vote over a person's frames stands in for the
    mirror. Its temperature and offsets come from the single-crop out-of-fold predictions.
    """
    def decisions(variant: str) -> dict:
        chosen = cv["variants"][variant]
        offsets = better_rule(cv["variants"], variant) == "offsets"
        return {"temperature": chosen["calibration"]["temperature"], "flip_average": variant == "flip_tta",
                "decision_offsets": chosen["offsets"]["chosen_on_all_folds"] if offsets else [0.0] * len(LABELS)}

    variant, _ = served_variant(cv["variants"], may_mirror(cv["config"]))
    still = decisions(variant)
    flip = variant == "flip_tta"
    return {**still, "unsure_below": UNSURE_BELOW, "live": decisions("plain") if flip else still}


def refresh_serving(out: Path, cv_dir: Path) -> dict:
    """Re-derive the serving decisions of the model in ``out`` from its finished cross-validation
    (``cv_dir/cv.json``) without training again: ``labels.json`` and ``metrics.json`` follow."""
    decisions = serving_decisions(json.loads((cv_dir / "cv.json").read_text()))
    contract = json.loads((out / LABELS_FILE).read_text())
    (out / LABELS_FILE).write_text(json.dumps({**contract, **decisions}, indent=2) + "\n")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["serving"] = decisions
    metrics["serving_command"] = f"python -m training.train --serving-only --cv {cv_dir} --out {out}"
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return decisions


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serving_only:
        if args.cv is None:
            raise SystemExit("--serving-only needs --cv DIR (the model's finished cross-validation)")
        if len(args.cv) != 1:
            raise SystemExit("--serving-only takes one --cv folder: the model's (the ensemble's, for an ensemble)")
        print(json.dumps(refresh_serving(args.out, args.cv[0]), indent=2))
        from training.report import write_model_card
        write_model_card(args.out)
        return 0
    started = time.time()
    settings, recipe, config = start_run(args, "training.train", argv)
    command = config["command"]

    replaced = replaced_candidates(args.out)  # read before the final model overwrites them

    # ---- Data: development images (cross-validation and the final fit) and validation ----------
    dev_samples, val_samples = load_splits(settings.data_dir, args.datasets, args.limit_images)
    faces, fold_of = development_faces(dev_samples, args.folds, recipe.seed)
    print("Faces per source and label (split by source image, stratified by rarest label):")
    print(describe_split(dev_samples, val_samples).replace(" train ", " dev   "))

    # ---- Cross-validation: scores, calibration and the decision rule ---------------------------
    try:
        members = [recipe] + [recipe.changed(spec) for spec in args.ensemble]
    except ValueError as exc:
        raise SystemExit(f"--ensemble: {exc}") from None
    configs = [{**config, "recipe": member.as_dict()} for member in members]
    cv_dirs = args.cv or [Path("runs/cv") / ("recipe-" + _recipe_hash(c)) for c in configs]
    if len(cv_dirs) != len(members):
        raise SystemExit(f"--cv names {len(cv_dirs)} folders for {len(members)} networks")
    member_cvs = [run_crossval(faces, fold_of, member, d, c) for member, d, c in zip(members, cv_dirs, configs)]
    if len(members) == 1:
        cv_dir, cv = cv_dirs[0], member_cvs[0]
    else:
        cv_dir = cv_dirs[0].parent / ("ensemble-" + hashlib.sha1(
            json.dumps([_recipe_hash(c) for c in configs]).encode()).hexdigest()[:10])
        cv = crossval_ensemble(cv_dirs, cv_dir, command)
    decisions = serving_decisions(cv)
    log.info("serving decisions from %s: %s", cv_dir, decisions)

    # ---- The final networks: every development face, the same recipes --------------------------
    fits = [final_fit(faces, member, d) for member, d in zip(members, cv_dirs)]
    export_classifier([(model, member) for (model, _), member in zip(fits, members)], args.out,
                      {**decisions, "chosen_on": f"out-of-fold predictions, {cv_dir}"})

    # ---- Report on the validation split, with the TFLite files as served -----------------------
    served = MaskClassifier(args.out)
    val_faces = FaceSet(val_samples, desc="val images")
    val_x = val_faces.model_inputs(served)
    probs = served.predict_proba(val_x)
    predictions = served.decide(probs)
    metrics = evaluate_predictions(val_faces.labels, predictions, val_faces)
    metrics.update({
        "command": command,
        "recipe": recipe.as_dict(),
        "datasets": args.datasets,
        "serving": decisions,
        "cv_dir": str(cv_dir),
        "cv": {k: cv[k] for k in ("config", "faces", "fold_seconds", "epoch_curve", "variants")},
        "members": [{"recipe": member.as_dict(), "cv_dir": str(d), "model_file": m.path.name,
                     "epoch_curve": mcv["epoch_curve"],
                     "fold_seconds": mcv["fold_seconds"], "history": history,
                     "tflite_vs_keras_max_abs_diff": _tflite_vs_keras(m, model, val_x[m.input_size][:64])}
                    for member, d, mcv, m, (model, history) in zip(members, cv_dirs, member_cvs, served.members, fits)],
        "compare": {name: summary for name, summary in {  # each network alone is a candidate too
            **replaced, **{str(d): candidate_summary(mcv) for d, mcv in zip(cv_dirs, member_cvs)},
            **{str(p): candidate_summary(json.loads((p / "cv.json").read_text()))
               for p in args.compare if (p / "cv.json").exists()}
        }.items() if name != str(cv_dir)},
        "val_calibration": {"ece": expected_calibration_error(probs, val_faces.labels),
                            "reliability": reliability(probs, val_faces.labels)},
        "split": {"dev": _counts(dev_samples), "val": _counts(val_samples)},
        "train_seconds": round(time.time() - started, 1),
        "versions": {"keras": keras.__version__, "tensorflow": _tf_version(), "numpy": np.__version__},
    })
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    from training.report import write_model_card, write_plots
    write_plots(metrics, args.out)
    write_model_card(args.out)
    for source, section in metrics["val"].items():
        print(format_report(section, f"validation {source}"))
    print(format_report(metrics["kaggle_min32"], "validation kaggle-facemask faces >= 32 px"))
    print(f"wrote {args.out} in {metrics['train_seconds']:.0f} s")
    return 0


def final_fit(faces: FaceSet, recipe: Recipe, cv_dir: Path) -> tuple[keras.Model, dict]:
    """The network of ``recipe`` fitted on every development face, kept in its CV folder
    (``final.keras``, ``final_history.json``; the folder holds one recipe and data only) so a
    re-run after a stop, or of another ensemble with this member, does not fit it again."""
    model_file, history_file = cv_dir / "final.keras", cv_dir / "final_history.json"
    if model_file.is_file() and history_file.is_file():
        log.info("final fit of %s reused (%s)", cv_dir, model_file)
        return keras.saving.load_model(model_file, compile=False), json.loads(history_file.read_text())
    model, history = fit_classifier(faces, recipe)
    model.save(model_file)
    history_file.write_text(json.dumps(history) + "\n")
    return model, history


def replaced_candidates(out: Path) -> dict[str, dict]:
    """The candidate table of the model a run replaces in ``out``: its own cross-validation and
    the candidates it was compared with. The card keeps the whole history of recipes tried, even
    where their ``runs/cv`` folders are gone (they are local, never committed)."""
    path = out / "metrics.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    if "cv" not in m:
        return {}
    config = m["cv"].get("config") or {"recipe": m["recipe"], "folds": len(m["cv"]["fold_seconds"]),
                                       "datasets": m["datasets"], "command": m["command"]}
    own = candidate_summary({"config": config, "variants": m["cv"]["variants"]})
    log.info("keeping the %d candidates of the model replaced in %s", len(m.get("compare", {})) + 1, out)
    return {**m.get("compare", {}), m["cv_dir"]: own}


def _recipe_hash(config: dict) -> str:
    key = {k: config[k] for k in RUN_KEYS}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def _counts(samples) -> dict[str, dict[str, int]]:
    return {src: dict(c) for src, c in face_counts(samples).items()}


def _tf_version() -> str:
    import tensorflow as tf
    return tf.__version__


def _tflite_vs_keras(member: Member, model: keras.Model, x: np.ndarray) -> float:
    """Largest difference between one network's raw TFLite and Keras probabilities (export fidelity)."""
    return float(np.abs(member.raw_proba(x) - model.predict(x, verbose=0)).max())


def evaluate_predictions(y_true: np.ndarray, y_pred: np.ndarray, faces: FaceSet) -> dict:
    """Validation metrics per source, and per face size on kaggle-facemask."""
    true = np.array(LABELS)[y_true]
    pred = np.array(LABELS)[y_pred]
    sources, sides = faces.sources, faces.short_sides
    out: dict = {"val": {}, "kaggle_by_size": {}}
    for source in sorted(set(sources)):
        m = sources == source
        out["val"][source] = classifier_section(true[m], pred[m])
    kaggle = sources == KAGGLE
    buckets = np.array([size_bucket(s) for s in sides])
    for name, _, _ in SIZE_BUCKETS:
        m = kaggle & (buckets == name)
        out["kaggle_by_size"][name] = classifier_section(true[m], pred[m])
    out["kaggle_min32"] = out["kaggle_by_size"][">=32px"]
    out["all"] = classifier_section(true, pred)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
