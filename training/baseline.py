"""The baseline the classifier must beat, measured with our own code.

Frozen ImageNet MobileNetV2 (α 1.0, 224 px) features of the true face boxes, cropped with the
served crop function, and a class-weighted logistic regression:

1. 5-fold cross-validation by image over kaggle-facemask (stratified group folds), and
2. trained on the train split and scored on the validation split ``training.train`` uses,
   next to the shipped model on the same faces, so the comparison is like for like.

    python -m training.baseline --out model/baseline.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from training.datasets import KAGGLE, load_dataset, split_by_image
from training.faces import FaceSet
from training.fit import install_offline_weights
from training.metrics import classifier_section
from webapp.config import Settings
from webapp.vision.classifier import LABELS_FILE, MaskClassifier
from webapp.vision.crop import DEFAULT_MARGIN, to_model_input
from webapp.vision.labels import LABELS

log = logging.getLogger("training.baseline")


def features(faces: FaceSet, backbone: keras.Model) -> np.ndarray:
    crops = to_model_input(faces.crops(224, DEFAULT_MARGIN))
    return backbone.predict(crops, batch_size=64, verbose=1)


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    clf = LogisticRegression(class_weight="balanced", max_iter=3000, C=1.0)
    clf.fit(x_train, y_train)
    return clf.predict(x_test)


def summary_row(model: str, evaluation: str, y_true: np.ndarray, y_pred: np.ndarray,
                sides: np.ndarray, spread: str = "") -> dict:
    true, pred = np.array(LABELS)[y_true], np.array(LABELS)[y_pred]
    sec = classifier_section(true, pred)
    big = sides >= 32
    sec32 = classifier_section(true[big], pred[big])
    pc = sec["per_class"]
    return {
        "model": model, "evaluation": evaluation,
        "macro_f1": f"{sec['macro_f1']:.3f}{spread}",
        "f1_with_mask": f"{pc['with_mask']['f1']:.3f}",
        "f1_mask_incorrect": f"{pc['mask_incorrect']['f1']:.3f}",
        "recall_mask_incorrect": f"{pc['mask_incorrect']['recall']:.3f}",
        "f1_without_mask": f"{pc['without_mask']['f1']:.3f}",
        "acc_min32": f"{sec32['accuracy']:.3f}",
        "f1_min32": f"{sec32['macro_f1']:.3f}",
        "n_mask_incorrect": pc["mask_incorrect"]["support"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path)
    p.add_argument("--weights", type=Path)
    p.add_argument("--model", type=Path, default=Settings().model_dir, help="shipped model to compare")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=1234, help="split seed (as in training.train)")
    p.add_argument("--out", type=Path, default=Settings().model_dir / "baseline.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.load({"data_dir": args.data, "weights_dir": args.weights})
    install_offline_weights(settings.weights_dir)
    keras.utils.set_random_seed(args.seed)

    samples = load_dataset(KAGGLE, settings.data_dir)
    faces = FaceSet(samples, desc="kaggle-facemask")
    groups = faces.groups
    y, sides = faces.labels, faces.short_sides
    backbone = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.0, include_top=False,
                                              weights="imagenet", pooling="avg")
    x = features(faces, backbone)

    rows = []
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=args.seed)
    pred = np.empty_like(y)
    fold_f1 = []
    for train_idx, test_idx in folds.split(x, y, groups):
        pred[test_idx] = fit_predict(x[train_idx], y[train_idx], x[test_idx])
        t, q = np.array(LABELS)[y[test_idx]], np.array(LABELS)[pred[test_idx]]
        fold_f1.append(classifier_section(t, q)["macro_f1"])
    spread = f" ± {np.std(fold_f1):.2f}"
    rows.append(summary_row("baseline: frozen MobileNetV2-224 + logistic regression",
                            "5-fold CV by image, kaggle-facemask dev", y, pred, sides, spread))

    _, val_s = split_by_image(samples, args.val_fraction, args.seed)
    val_groups = {s.group for s in val_s}
    in_val = np.isin(groups, list(val_groups))
    pred_val = fit_predict(x[~in_val], y[~in_val], x[in_val])
    rows.append(summary_row("baseline: frozen MobileNetV2-224 + logistic regression",
                            "our split: kaggle train -> kaggle val", y[in_val], pred_val, sides[in_val]))
    if (args.model / LABELS_FILE).exists():
        served = MaskClassifier(args.model)
        val_faces = FaceSet(val_s, desc="kaggle val")
        decided = served.decide(served.predict_proba(val_faces.model_inputs(served)))  # as served
        rows.append(summary_row(f"shipped model ({args.model.name}/)", "our split: kaggle val",
                                val_faces.labels, decided, val_faces.short_sides))
    result = {"command": "python -m training.baseline " + " ".join(sys.argv[1:] if argv is None else argv),
              "description": "frozen ImageNet MobileNetV2 (α 1.0, 224 px) features of true boxes + "
                             "LogisticRegression(class_weight='balanced')",
              "fold_macro_f1": fold_f1, "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
