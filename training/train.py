"""Train the 3-class face-mask classifier (MobileNetV2, ImageNet weights) and write ``model/``.

Reads top to bottom like a Keras example: data, model, train (head, then fine-tune), export,
evaluate. Usage::

    python -m training.train                      # the shipped model (see model/MODEL_CARD.md)
    python -m training.train --alpha 1.0 --size 224 --out runs/a10-224

Dataset and weight locations come from settings (``MASKWATCH_DATA``, ``MASKWATCH_WEIGHTS``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from training.datasets import ALL_DATASETS, KAGGLE, describe_split, face_counts, load_all, split_by_image
from training.faces import FaceSet, augmented_batch
from training.metrics import SIZE_BUCKETS, classifier_section, format_report, macro_f1, size_bucket
from webapp.config import Settings
from webapp.vision.classifier import LABELS_FILE, MODEL_FILE, MaskClassifier
from webapp.vision.crop import DEFAULT_MARGIN, to_model_input
from webapp.vision.labels import LABELS, MASK_INCORRECT

log = logging.getLogger("training.train")

KERAS_FILE = "mask_classifier.keras"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="datasets folder (default: MASKWATCH_DATA)")
    p.add_argument("--weights", type=Path,
                   help="folder with Keras' MobileNetV2 .h5 files to install into $KERAS_HOME/models")
    p.add_argument("--datasets", nargs="+", default=list(ALL_DATASETS), choices=ALL_DATASETS)
    p.add_argument("--out", type=Path, default=Settings().model_dir, help="output folder (default: model/)")
    p.add_argument("--alpha", type=float, default=0.35, choices=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4))
    p.add_argument("--size", type=int, default=128, help="input size in pixels (square)")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="crop margin around the face box")
    p.add_argument("--balance", choices=("class_weight", "sampling", "none"), default="class_weight",
                   help="how the rare mask_incorrect class is handled")
    p.add_argument("--head-epochs", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=24)
    p.add_argument("--finetune-layers", type=int, default=100,
                   help="how many of the backbone's top layers are trained in phase 2 (BatchNorm stays frozen)")
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps-per-epoch", type=int, help="default: one pass over the training faces")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--limit-images", type=int, help="use only this many images per dataset (smoke tests)")
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args(argv)


def install_offline_weights(weights_dir: Path | None) -> None:
    """Copy Keras' backbone files into ``$KERAS_HOME/models`` so ``weights="imagenet"`` works offline."""
    if weights_dir is None:
        return
    weights_dir = Path(weights_dir)
    if not weights_dir.is_dir():
        raise SystemExit(f"weights folder not found: {weights_dir}")
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    cache.mkdir(parents=True, exist_ok=True)
    for f in weights_dir.glob("*.h5"):
        if not (cache / f.name).exists():
            shutil.copy2(f, cache / f.name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.load({"data_dir": args.data, "weights_dir": args.weights})
    install_offline_weights(settings.weights_dir)
    keras.utils.set_random_seed(args.seed)
    started = time.time()

    # ---- Data -------------------------------------------------------------------------------
    samples = load_all(settings.data_dir, args.datasets)
    if not samples:
        raise SystemExit(f"no dataset found under {settings.data_dir}; set MASKWATCH_DATA (see README)")
    train_samples, val_samples = split_by_image(samples, args.val_fraction, args.seed)
    if args.limit_images:
        train_samples = _limit(train_samples, args.limit_images)
        val_samples = _limit(val_samples, max(args.limit_images // 2, 1))
    print("Faces per source and label (split by source image, stratified by rarest label):")
    print(describe_split(train_samples, val_samples))
    train_faces = FaceSet(train_samples, desc="train images")
    val_faces = FaceSet(val_samples, desc="val images")
    val_x = to_model_input(val_faces.crops(args.size, args.margin))
    val_y = val_faces.labels

    # ---- Model ------------------------------------------------------------------------------
    # The backbone is built shape-agnostic: Keras then loads its ImageNet weights for 224 px
    # (the files shipped offline) and the convolutional weights apply at any input size.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Weights for input shape \\(224, 224\\)")
        backbone = keras.applications.MobileNetV2(input_shape=(None, None, 3), alpha=args.alpha,
                                                  include_top=False, weights="imagenet")
    inputs = keras.Input((args.size, args.size, 3), name="face")
    x = backbone(inputs, training=False)  # BatchNorm stays in inference mode in both phases
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax", name="mask_class")(x)
    model = keras.Model(inputs, outputs, name="mask_classifier")

    # ---- Train ------------------------------------------------------------------------------
    batches = TrainBatches(train_faces, args)
    class_weight = _class_weights(train_faces.labels) if args.balance == "class_weight" else None
    score = ValidationScore(val_x, val_y, val_faces.sources)

    backbone.trainable = False
    model.compile(keras.optimizers.Adam(args.head_lr), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    head = model.fit(batches, epochs=args.head_epochs, class_weight=class_weight, callbacks=[score])

    backbone.trainable = True
    for layer in backbone.layers[:-args.finetune_layers]:
        layer.trainable = False
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model.compile(keras.optimizers.Adam(args.finetune_lr), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_macro_f1", mode="max", patience=args.patience,
                                         restore_best_weights=True, start_from_epoch=0)
    fine = model.fit(batches, epochs=args.head_epochs + args.finetune_epochs,
                     initial_epoch=args.head_epochs, class_weight=class_weight,
                     callbacks=[score, stop])
    history = {k: head.history.get(k, []) + fine.history.get(k, []) for k in fine.history}
    best_epoch = int(np.argmax(history["val_macro_f1"])) + 1

    # ---- Export -----------------------------------------------------------------------------
    args.out.mkdir(parents=True, exist_ok=True)
    export(model, args)

    # ---- Evaluate what is served (the TFLite file) --------------------------------------------
    served = MaskClassifier(args.out)
    probs = served.predict_proba(val_x)
    keras_probs = model.predict(val_x[:64], verbose=0)
    metrics = evaluate_predictions(val_y, probs.argmax(1), val_faces)
    metrics.update({
        "command": "python -m training.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                   if k not in ("data", "weights", "out")},
        "split": {"train": _counts(train_samples), "val": _counts(val_samples)},
        "history": {k: [float(v) for v in vals] for k, vals in history.items()},
        "head_epochs": args.head_epochs,
        "best_epoch": best_epoch,
        "tflite_vs_keras_max_abs_diff": float(np.abs(probs[:64] - keras_probs).max()),
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


def _limit(samples: list, n: int) -> list:
    by_source: dict[str, list] = {}
    for s in samples:
        by_source.setdefault(s.source, []).append(s)
    return [s for group in by_source.values() for s in group[:n]]


def _counts(samples) -> dict[str, dict[str, int]]:
    return {src: dict(c) for src, c in face_counts(samples).items()}


def _tf_version() -> str:
    import tensorflow as tf
    return tf.__version__


def _class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse class frequency, normalised so the mean weight per face is 1."""
    counts = np.bincount(labels, minlength=len(LABELS)).astype(float)
    present = counts > 0
    weights = np.where(present, len(labels) / (present.sum() * np.maximum(counts, 1)), 0.0)
    return {i: float(w) for i, w in enumerate(weights)}


class TrainBatches(keras.utils.PyDataset):
    """Augmented batches; with ``--balance sampling`` every class is drawn equally often.

    Each (epoch, batch) has its own random generator, so a run is reproducible for a seed.
    """

    def __init__(self, faces: FaceSet, args: argparse.Namespace) -> None:
        super().__init__()
        self.faces, self.args = faces, args
        self.steps = args.steps_per_epoch or int(np.ceil(len(faces) / args.batch_size))
        self.epoch = 0
        self.by_class = [np.flatnonzero(faces.labels == c) for c in range(len(LABELS))]
        self._order = self._draw()

    def _draw(self) -> np.ndarray:
        rng = np.random.default_rng((self.args.seed, self.epoch))
        n = self.steps * self.args.batch_size
        if self.args.balance == "sampling":
            classes = [c for c in self.by_class if len(c)]
            picks = rng.integers(0, len(classes), n)
            return np.array([classes[k][rng.integers(0, len(classes[k]))] for k in picks])
        return rng.choice(len(self.faces), n, replace=n > len(self.faces))

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self._order[i * self.args.batch_size:(i + 1) * self.args.batch_size]
        rng = np.random.default_rng((self.args.seed, self.epoch, i))
        x = augmented_batch(self.faces, idx, self.args.size, self.args.margin, rng)
        return x, self.faces.labels[idx]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._draw()


class ValidationScore(keras.callbacks.Callback):
    """Adds val_macro_f1 (all validation faces pooled), val_kaggle_f1, val_incorrect_recall and
    val_loss to the logs, so early stopping selects on what the acceptance criteria measure."""

    def __init__(self, val_x: np.ndarray, val_y: np.ndarray, sources: np.ndarray) -> None:
        super().__init__()
        self.val_x, self.val_y, self.sources = val_x, val_y, sources

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        y = self.val_y
        probs = self.model.predict(self.val_x, batch_size=128, verbose=0)
        pred = probs.argmax(1)
        kaggle = self.sources == KAGGLE
        incorrect = y == LABELS.index(MASK_INCORRECT)
        values = {
            "val_loss": float(-np.mean(np.log(probs[np.arange(len(y)), y] + 1e-7))),
            "val_macro_f1": macro_f1(y, pred),
            "val_kaggle_f1": macro_f1(y[kaggle], pred[kaggle]) if kaggle.any() else 0.0,
            "val_incorrect_recall": float((pred[incorrect] == y[incorrect]).mean())
            if incorrect.any() else 0.0,
        }
        if logs is not None:
            logs.update(values)
        print("  " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)


def export(model: keras.Model, args: argparse.Namespace) -> None:
    """Write the .keras file (weights and architecture, no optimizer state), the fp32 TFLite
    file and labels.json, the preprocessing contract the server reads."""
    with tempfile.TemporaryDirectory() as tmp:
        # A compiled model saves its optimizer state too; reloading without compiling drops it.
        model.save(Path(tmp) / KERAS_FILE)
        clean = keras.saving.load_model(Path(tmp) / KERAS_FILE, compile=False)
    clean.save(args.out / KERAS_FILE)
    clean.export(str(args.out / MODEL_FILE), format="litert", verbose=False)
    contract = {
        "labels": list(LABELS),
        "input_size": args.size,
        "crop_margin": args.margin,
        "crop": "square around the face box, side = longer box side * (1 + 2 * crop_margin); "
                "outside the image the edge repeats (webapp/vision/crop.py)",
        "color": "RGB",
        "scaling": "x / 127.5 - 1 (float32 in [-1, 1])",
        "alpha": args.alpha,
        "architecture": "MobileNetV2 (ImageNet) + global average pooling + dropout + dense softmax",
    }
    (args.out / LABELS_FILE).write_text(json.dumps(contract, indent=2) + "\n")


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
