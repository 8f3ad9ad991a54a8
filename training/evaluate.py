"""Evaluate the served model on labelled data and write the DESIGN.md JSON.

    python -m training.evaluate --crops DIR [--json FILE]
        DIR holds one sub-folder per class (canonical name or dataset alias), one face per image.
    python -m training.evaluate --images DIR --annotations DIR [--label-map A=B,...] [--json FILE]
        PASCAL VOC images and boxes; the classifier is scored on the true face boxes.

The model is the TFLite file the server runs (``--model``, default ``model/``), with the crop
parameters from its ``labels.json``: what is measured here is exactly what is served.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from training.datasets import Sample, read_class_folders, read_voc
from training.faces import FaceSet
from training.metrics import SIZE_BUCKETS, classifier_section, format_report, size_bucket
from webapp.config import Settings
from webapp.vision.classifier import MaskClassifier
from webapp.vision.crop import to_model_input
from webapp.vision.labels import LABELS

log = logging.getLogger("training.evaluate")


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
    crops = faces.crops(classifier.input_size, classifier.margin)
    probs = np.concatenate([classifier.predict_proba(to_model_input(crops[i:i + batch]))
                            for i in range(0, len(crops), batch)])
    true = [LABELS[i] for i in faces.labels]
    pred = [classifier.labels[i] for i in probs.argmax(1)]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--crops", type=Path, help="folder of class sub-folders with face crops")
    p.add_argument("--images", type=Path, help="folder of images (with --annotations)")
    p.add_argument("--annotations", type=Path, help="folder of PASCAL VOC xml files")
    p.add_argument("--label-map", type=parse_label_map, default={}, help="extra label aliases, A=B,...")
    p.add_argument("--model", type=Path, help="model folder (default: MASKWATCH_MODEL or model/)")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if bool(args.images) != bool(args.annotations) or bool(args.crops) == bool(args.images):
        p.error("give either --crops DIR, or --images DIR together with --annotations DIR")
    for folder in filter(None, (args.crops, args.images, args.annotations)):
        if not folder.is_dir():
            p.error(f"not a folder: {folder}")
    settings = Settings.load({"model_dir": args.model})
    classifier = MaskClassifier(settings.model_dir)

    if args.crops:
        samples = read_class_folders(args.crops, args.crops.name, args.label_map)
    else:
        samples = read_voc(args.images, args.annotations, args.images.name, label_map=args.label_map)
    if not samples:
        print("no labelled images found", file=sys.stderr)
        return 1
    section = classifier_report(samples, classifier)
    print(format_report(section, "classifier on true face boxes"))
    for name, sub in section["by_size"].items():
        if sub["n"]:
            print(f"  faces {name:8s} n={sub['n']:5d}  accuracy {sub['accuracy']:.3f}  macro-F1 {sub['macro_f1']:.3f}")
    result = {"model": str(classifier.model_path), "classifier": section}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
