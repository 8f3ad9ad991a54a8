"""Evaluate the served model on labelled data and write the DESIGN.md JSON.

    python -m training.evaluate --crops DIR [--json FILE]
        DIR holds one sub-folder per class (canonical name or dataset alias), one face per image.
    python -m training.evaluate --images DIR --annotations DIR [--label-map A=B,...] [--json FILE]
        PASCAL VOC images and boxes: the served pipeline (detector + classifier) end to end,
        COCO AP@0.5 per class and mAP (all faces and faces >= 32 px), detector recall per class
        and size, and the classifier alone on the true face boxes.
    python -m training.evaluate --images DIR --annotations DIR --compare-detectors
        Every detector configuration in one table: recall per class x size, precision, ms/image.

The model is the TFLite file the server runs (``--model``, default ``model/``), with the crop
parameters from its ``labels.json``, and the images go through ``Pipeline.process`` as bytes:
what is measured here is exactly what is served.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from training.datasets import Sample, read_class_folders, read_voc_folder, split_by_image
from training.detection_metrics import Predicted, Truth, coco_ap50, detector_recall
from training.faces import FaceSet
from training.metrics import SIZE_BUCKETS, classifier_section, format_report, number_cell, size_bucket
from training.train_detector import fit_and_tune
from webapp.config import Settings
from webapp.vision.classifier import MaskClassifier
from webapp.vision.crop import to_model_input
from webapp.vision.detector import DETECTORS, create_detector
from webapp.vision.labels import LABELS
from webapp.vision.pipeline import FILE_FORMATS, FrameError, Pipeline, build_pipeline, decode_image

log = logging.getLogger("training.evaluate")
BOOTSTRAP_ROUNDS = 200  # resamples of the images for the 95 % intervals (COCO AP each)


def parse_label_map(text: str | None) -> dict[str, str]:
    """'mask_weared_incorrect=mask_incorrect,face_mask=with_mask' -> dict."""
    mapping: dict[str, str] = {}
    for item in filter(None, (text or "").split(",")):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--label-map entries look like A=B, got {item!r}")
        key, value = (part.strip() for part in item.split("=", 1))
        if value not in LABELS:
            raise argparse.ArgumentTypeError(f"--label-map target {value!r} is not one of {', '.join(LABELS)}")
        mapping[key] = value
    return mapping


def classify_true_boxes(samples: Sequence[Sample], classifier: MaskClassifier,
                        batch: int = 64) -> tuple[list[str], list[str], np.ndarray]:
    """(true labels, predicted labels, face short sides) for every labelled face."""
    faces = FaceSet(samples, desc="images")
    if not len(faces):
        return [], [], np.zeros(0)
    crops = {size: faces.crops(size, classifier.margin) for size in classifier.input_sizes}
    probs = np.concatenate([
        classifier.predict_proba({size: to_model_input(c[i:i + batch]) for size, c in crops.items()})
        for i in range(0, len(faces), batch)])
    true = [LABELS[i] for i in faces.labels]
    pred = [classifier.labels[i] for i in classifier.decide(probs)]
    return true, pred, faces.short_sides


def classifier_report(samples: Sequence[Sample], classifier: MaskClassifier) -> dict[str, Any]:
    """The ``classifier`` JSON section, plus the same per face-size bucket."""
    true, pred, sides = classify_true_boxes(samples, classifier)
    section = classifier_section(true, pred)
    buckets = np.array([size_bucket(s) for s in sides])
    section["by_size"] = {name: classifier_section([t for t, b in zip(true, buckets) if b == name],
                                                   [p for p, b in zip(pred, buckets) if b == name])
                          for name, _, _ in SIZE_BUCKETS}
    return section


def _truths(sample: Sample) -> list[Truth]:
    return [Truth(f.box, f.label) for f in sample.faces]


def end_to_end(samples: Sequence[Sample], pipeline: Pipeline, rounds: int = BOOTSTRAP_ROUNDS) -> dict[str, Any]:
    """Run the served pipeline on every image file and score its labelled boxes (with bootstrap
    95 % intervals over images: a few dozen mask_incorrect faces make every AP uncertain)."""
    truths, preds, ms = [], [], []
    for sample in tqdm(samples, desc="pipeline", unit="img"):
        try:
            result = pipeline.process(sample.path.read_bytes(), formats=FILE_FORMATS)
        except (OSError, FrameError) as exc:
            log.warning("%s: %s", sample.path.name, exc)
            continue
        truths.append(_truths(sample))
        preds.append([Predicted(f.box, f.label, f.score * f.detector_score) for f in result.faces])
        ms.append(result.ms["total"])
    all_faces = coco_ap50(truths, preds)
    big_faces = coco_ap50(truths, preds, min_side=32)
    recall = detector_recall(truths, [[p.box for p in ps] for ps in preds])
    return {
        "map50": all_faces.pop("map50"), "ap50": all_faces,
        "map50_min32": big_faces.pop("map50"), "ap50_min32": big_faces,
        **recall,
        "images": len(truths), "ms_per_image_median": float(np.median(ms)) if ms else None,
        "interval95": bootstrap_intervals(truths, preds, rounds) if rounds else {},
    }


def _headline(truths: Sequence[Sequence[Truth]], preds: Sequence[Sequence[Predicted]]) -> dict[str, float | None]:
    """The numbers of the comparison table that get an interval."""
    all_faces, big_faces = coco_ap50(truths, preds), coco_ap50(truths, preds, min_side=32)
    recall = detector_recall(truths, [[p.box for p in ps] for ps in preds])
    return {"map50": all_faces["map50"], "map50_min32": big_faces["map50"],
            "ap50_mask_incorrect": all_faces["mask_incorrect"], "precision": recall["precision"],
            **{f"recall_min32_{lab}": recall["recall_min32"][lab] for lab in LABELS}}


def bootstrap_intervals(truths: Sequence[Sequence[Truth]], preds: Sequence[Sequence[Predicted]],
                        rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> dict[str, list[float]]:
    """2.5 and 97.5 percentiles of the headline numbers over images resampled with replacement."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in tqdm(range(rounds), desc="bootstrap", unit="round", leave=False):
        idx = rng.integers(0, len(truths), len(truths))
        for key, value in _headline([truths[i] for i in idx], [preds[i] for i in idx]).items():
            if value is not None:
                draws.setdefault(key, []).append(value)
    return {key: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for key, v in draws.items()}


def compare_detectors(samples: Sequence[Sample], names: Sequence[str], model_dir: Path) -> list[dict[str, Any]]:
    """Recall per class and size, precision and time of each detector on the same images."""
    images = [(s, _rgb(s)) for s in tqdm(samples, desc="decode", unit="img")]
    rows = []
    for name in names:
        detector = create_detector(name, model_dir=model_dir)
        boxes, times = [], []
        for _, image in tqdm(images, desc=name, unit="img", leave=False):
            t = time.perf_counter()
            boxes.append([d.box for d in detector.detect(image)])
            times.append((time.perf_counter() - t) * 1000)
        row = detector_recall([_truths(s) for s, _ in images], boxes)
        row.update({"detector": name, "ms_median": float(np.median(times))})
        rows.append(row)
    return rows


def _rgb(sample: Sample) -> np.ndarray:
    return decode_image(sample.path.read_bytes(), max_bytes=1 << 30, formats=FILE_FORMATS)


def _pct(v: float | None) -> str:
    return "  –" if v is None else f"{100 * v:3.0f}"


def format_detector_table(rows: Sequence[dict[str, Any]]) -> str:
    buckets = [b for b, _, _ in SIZE_BUCKETS]
    head = " | ".join(f"{lab} {'/'.join(buckets)}" for lab in LABELS)
    lines = [f"| detector | all | {head} | precision | ms/image |",
             "|---|---|" + "---|" * len(LABELS) + "---|---|"]
    for r in rows:
        cells = " | ".join(" / ".join(_pct(r["recall_by_size"][lab][b]) for b in buckets) for lab in LABELS)
        lines.append(f"| {r['detector']} | {_pct(r['recall_all'])} | {cells} | {_pct(r['precision'])} | "
                     f"{r['ms_median']:.1f} |")
    return "\n".join(lines)


def format_pipeline_table(rows: Sequence[dict[str, Any]]) -> str:
    """One row per detector of the served pipeline: the README's and model card's comparison table."""
    f = number_cell
    lines = ["| detector | mAP@0.5 all | mAP@0.5 >= 32 px | AP mask_incorrect | recall >= 32 px with / incorrect / "
             "without | recall 16-31 px | recall < 16 px | precision | ms / image |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rec, size, ci = r["recall_min32"], r["recall_by_size_all"], r.get("interval95", {})

        def g(value: float | None, key: str) -> str:
            """The value with its bootstrap interval where the evaluation computed one."""
            return f(value) + (f" [{ci[key][0]:.2f}, {ci[key][1]:.2f}]" if ci.get(key) else "")
        lines.append(f"| {r['detector']} | {g(r['map50'], 'map50')} | {g(r['map50_min32'], 'map50_min32')} | "
                     f"{g(r['ap50']['mask_incorrect'], 'ap50_mask_incorrect')} | "
                     + " / ".join(g(rec[k], f"recall_min32_{k}") for k in LABELS)
                     + f" | {f(size['16-31px'])} | {f(size['<16px'])} | {g(r['precision'], 'precision')} | "
                     f"{f(r['ms_per_image_median'], 1)} |")
    return "\n".join(lines)


def format_end_to_end(r: dict[str, Any]) -> str:
    f = number_cell
    lines = [f"end to end on {r['images']} images (median {r['ms_per_image_median']:.1f} ms/image)",
             f"  mAP@0.5 all faces {f(r['map50'])}   faces >= 32 px {f(r['map50_min32'])}",
             f"  {'label':16s} {'AP50':>6s} {'AP50>=32':>9s} {'recall':>7s} {'recall>=32':>10s}"]
    for lab in LABELS:
        lines.append(f"  {lab:16s} {f(r['ap50'][lab]):>6s} {f(r['ap50_min32'][lab]):>9s} "
                     f"{f(r['recall'][lab]):>7s} {f(r['recall_min32'][lab]):>10s}")
    lines.append(f"  detector precision (IoU >= 0.4 with a true face): {f(r['precision'])}, "
                 f"{r['detections_per_image']:.2f} detections per image")
    if r.get("interval95"):
        lines.append("  95 % intervals, images resampled: " + ", ".join(
            f"{key} [{lo:.3f}, {hi:.3f}]" for key, (lo, hi) in r["interval95"].items()))
    return "\n".join(lines)


def split_side(samples: Sequence[Sample], side: str, val_fraction: float, seed: int) -> list[Sample]:
    """The images of one side of the models' split: ``val`` (never trained on, reported on),
    ``train``, or ``tune`` (training images held out of the face detector's training, which chose
    its operating point: where detector candidates are compared)."""
    train, val = split_by_image(samples, val_fraction, seed)
    if side == "tune":
        return fit_and_tune(train, seed)[1]
    return val if side == "val" else train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--crops", type=Path, help="folder of class sub-folders with face crops")
    p.add_argument("--images", type=Path, help="folder of images (with --annotations)")
    p.add_argument("--annotations", type=Path, help="folder of PASCAL VOC xml files")
    p.add_argument("--label-map", type=parse_label_map, default={}, help="extra label aliases, A=B,...")
    p.add_argument("--model", type=Path, help="model folder (default: MASKWATCH_MODEL or model/)")
    p.add_argument("--split", choices=("val", "train", "tune"),
                   help="only this side of training's split (same --seed/--val-fraction as training); tune: "
                        "the training images held out of the face detector's training (they chose its operating point)")
    p.add_argument("--seed", type=int, default=1234, help="split seed (with --split)")
    p.add_argument("--val-fraction", type=float, default=0.25, help="(with --split)")
    p.add_argument("--detector", nargs="+", choices=DETECTORS,
                   help="detector for the end-to-end run (default: settings); several give one comparison table")
    p.add_argument("--compare-detectors", nargs="*", choices=DETECTORS, metavar="NAME",
                   help="detector-only table for these detectors (default: all)")
    p.add_argument("--bootstrap", type=int, default=BOOTSTRAP_ROUNDS,
                   help="resamples of the images for 95 %% intervals of the end-to-end numbers (0: none)")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if bool(args.images) != bool(args.annotations) or bool(args.crops) == bool(args.images):
        p.error("give either --crops DIR, or --images DIR together with --annotations DIR")
    for folder in filter(None, (args.crops, args.images, args.annotations)):
        if not folder.is_dir():
            p.error(f"not a folder: {folder}")
    detectors = args.detector or [None]
    settings = Settings.load({"model_dir": args.model, "detector": detectors[0]})

    if args.crops:
        samples = read_class_folders(args.crops, args.crops.resolve().name, args.label_map)
    else:
        samples = read_voc_folder(args.images, args.annotations, label_map=args.label_map)
    if args.split:
        samples = split_side(samples, args.split, args.val_fraction, args.seed)
    if not samples:
        print("no labelled images found", file=sys.stderr)
        return 1
    result: dict[str, Any] = {}
    if args.compare_detectors is not None:
        rows = compare_detectors(samples, args.compare_detectors or DETECTORS, settings.model_dir)
        print(format_detector_table(rows))
        result["detectors"] = rows
        _write_json(args.json, result)
        return 0
    pipeline = build_pipeline(settings) if args.images else None
    classifier = pipeline.classifier if pipeline else MaskClassifier(settings.model_dir, settings.classifier_threads)
    result["classifier_models"] = [m.path.name for m in classifier.members]  # file names, as /healthz gives them
    if pipeline:
        data = str(Settings.load().data_dir)
        result["command"] = "python -m training.evaluate " + " ".join(
            a.replace(data, "$MASKWATCH_DATA") for a in (sys.argv[1:] if argv is None else argv))
        result["rows"] = []
        for name in detectors:
            if name is not None and name != settings.detector:
                settings = Settings.load({"model_dir": args.model, "detector": name})
                pipeline = build_pipeline(settings)
            row = {"detector": settings.detector, **end_to_end(samples, pipeline, args.bootstrap)}
            result["rows"].append(row)
            print(format_end_to_end(row))
        result.update(result["rows"][0])
        if len(result["rows"]) > 1:
            print(format_pipeline_table(result["rows"]))
    section = classifier_report(samples, classifier)
    print(format_report(section, "classifier on true face boxes"))
    for name, sub in section["by_size"].items():
        if sub["n"]:
            print(f"  faces {name:8s} n={sub['n']:5d}  accuracy {sub['accuracy']:.3f}  macro-F1 {sub['macro_f1']:.3f}")
    result["classifier"] = section
    _write_json(args.json, result)
    return 0


def _write_json(path: Path | None, result: dict[str, Any]) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
