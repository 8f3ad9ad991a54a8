"""One classifier recipe, trained the same way by ``training.train`` (the shipped model) and by
``training.crossval`` (model selection), so what cross-validation chose is what ships.

A recipe trains for a *fixed* number of epochs: the epoch count is chosen from the
cross-validation curves, never by early stopping on the faces that are then reported.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np

from training.datasets import IMFD, KAGGLE, MASKON
from training.faces import FaceSet, MaskDonors, augmented_batch
from training.recipe import Recipe
from webapp.vision.classifier import LABELS_FILE
from webapp.vision.labels import LABELS, MASK_INCORRECT

SYNTHETIC_SOURCES = (MASKON, IMFD)  # MaskedFace-Net: masks drawn onto FFHQ portraits


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


def build_classifier(recipe: Recipe) -> tuple[keras.Model, keras.Model]:
    """MobileNetV2 (ImageNet) + pooling + dropout + softmax; returns (model, backbone)."""
    # The backbone is built shape-agnostic: Keras then loads its ImageNet weights for 224 px
    # (the files shipped offline) and the convolutional weights apply at any input size.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Weights for input shape \\(224, 224\\)")
        backbone = keras.applications.MobileNetV2(input_shape=(None, None, 3), alpha=recipe.alpha,
                                                  include_top=False, weights="imagenet")
    inputs = keras.Input((recipe.size, recipe.size, 3), name="face")
    x = backbone(inputs, training=False)  # BatchNorm stays in inference mode in both phases
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax", name="mask_class")(x)
    return keras.Model(inputs, outputs, name="mask_classifier"), backbone


EpochHook = Callable[[int, keras.Model], dict[str, float]]


def fit_classifier(faces: FaceSet, recipe: Recipe, on_epoch: EpochHook | None = None
                   ) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train a new classifier on ``faces``: the head first, then the top of the backbone.

    ``on_epoch(epoch, model)`` may return extra numbers to log per epoch (cross-validation
    scores its held-out fold with it); they never steer training.
    """
    keras.utils.set_random_seed(recipe.seed)
    model, backbone = build_classifier(recipe)
    batches = TrainBatches(faces, recipe)
    callbacks = [EpochScores(on_epoch)] if on_epoch else []

    def compile_(lr: float | keras.optimizers.schedules.LearningRateSchedule) -> None:
        if recipe.focal_gamma > 0:
            # alpha 1: the classes are balanced by ``class_weight``/sampling, not by the loss.
            loss = keras.losses.CategoricalFocalCrossentropy(
                alpha=1.0, gamma=recipe.focal_gamma, label_smoothing=recipe.label_smoothing)
        else:
            loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)
        model.compile(keras.optimizers.Adam(lr), loss, metrics=["accuracy"])

    backbone.trainable = False
    compile_(recipe.head_lr)
    head = model.fit(batches, epochs=recipe.head_epochs, callbacks=callbacks,
                     verbose=2)

    backbone.trainable = True
    for layer in backbone.layers[:-recipe.finetune_layers]:
        layer.trainable = False
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    compile_(finetune_rate(recipe, len(batches)))
    fine = model.fit(batches, epochs=recipe.head_epochs + recipe.finetune_epochs,
                     initial_epoch=recipe.head_epochs, callbacks=callbacks,
                     verbose=2)
    history = {k: [float(v) for v in head.history.get(k, []) + fine.history.get(k, [])]
               for k in fine.history}
    return model, history


def finetune_rate(recipe: Recipe, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The fine-tune phase's learning rate: constant, or a cosine decay to 0 over its epochs.

    At a constant rate the weights after the last epoch are one noisy draw (the cross-validation
    epoch curves swing by several points of macro-F1 between neighbouring epochs); decaying the
    rate lets the last epochs settle instead, at the same cost.
    """
    if recipe.finetune_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(recipe.finetune_lr, recipe.finetune_epochs * steps_per_epoch)
    return recipe.finetune_lr


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse class frequency, normalised so the mean weight per face is 1."""
    counts = np.bincount(labels, minlength=len(LABELS)).astype(float)
    present = counts > 0
    weights = np.where(present, len(labels) / (present.sum() * np.maximum(counts, 1)), 0.0)
    return {i: float(w) for i, w in enumerate(weights)}


def face_weights(faces: FaceSet, recipe: Recipe) -> np.ndarray:
    """Each face's weight in the loss: its class weight (``balance="class_weight"``), and with
    ``recipe.real_share`` real photographs given at least that share of their class's weight.

    Most ``mask_incorrect`` faces are synthetic (MaskedFace-Net draws a mask onto a studio
    portrait), only ~16 % are street photos, yet the photos are what the product sees; the
    reweighting moves weight from the synthetic faces of a class to its photos, keeping the
    class's total, so the class balance is unchanged.
    """
    labels = faces.labels
    weights = np.ones(len(labels))
    if recipe.balance == "class_weight":
        per_class = class_weights(labels)
        weights = np.array([per_class[c] for c in range(len(LABELS))])[labels]
    if recipe.real_share > 0:
        synthetic = np.isin(faces.sources, SYNTHETIC_SOURCES)
        for c in range(len(LABELS)):
            real, synth = (labels == c) & ~synthetic, (labels == c) & synthetic
            total, real_total = weights[labels == c].sum(), weights[real].sum()
            if real.any() and synth.any() and real_total < recipe.real_share * total:
                weights[synth] *= (1 - recipe.real_share) * total / weights[synth].sum()
                weights[real] *= recipe.real_share * total / real_total
    return weights.astype(np.float32)


class TrainBatches(keras.utils.PyDataset):
    """Augmented batches with one-hot targets and per-face loss weights (``face_weights``);
    with ``balance="sampling"`` every class is drawn equally often. Each (epoch, batch) has its
    own random generator, so a run is reproducible. A face that the augmentation turns into
    ``mask_incorrect`` (``recipe.pulled_mask``) weighs what that class's real photos weigh."""

    def __init__(self, faces: FaceSet, recipe: Recipe) -> None:
        super().__init__()
        self.faces, self.recipe = faces, recipe
        self.labels = faces.labels
        self.weights = face_weights(faces, recipe)
        self.donors = MaskDonors(faces, KAGGLE) if recipe.pulled_mask > 0 else None
        incorrect = (self.labels == LABELS.index(MASK_INCORRECT)) & ~np.isin(faces.sources, SYNTHETIC_SOURCES)
        self.pulled_weight = float(self.weights[incorrect].mean()) if incorrect.any() else 1.0
        self.steps = int(np.ceil(len(faces) / recipe.batch_size))
        self.epoch = 0
        self.by_class = [np.flatnonzero(self.labels == c) for c in range(len(LABELS))]
        self._order = self._draw()

    def _draw(self) -> np.ndarray:
        rng = np.random.default_rng((self.recipe.seed, self.epoch))
        n = self.steps * self.recipe.batch_size
        if self.recipe.balance == "sampling":
            classes = [c for c in self.by_class if len(c)]
            picks = rng.integers(0, len(classes), n)
            return np.array([classes[k][rng.integers(0, len(classes[k]))] for k in picks])
        return rng.choice(len(self.faces), n, replace=n > len(self.faces))

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r = self.recipe
        idx = self._order[i * r.batch_size:(i + 1) * r.batch_size]
        rng = np.random.default_rng((r.seed, self.epoch, i))
        x, labels = augmented_batch(self.faces, idx, r.size, r.margin, rng, occlusion=r.occlusion,
                                    pulled_mask=r.pulled_mask, donors=self.donors)
        weights = np.where(labels != self.labels[idx], self.pulled_weight, self.weights[idx]).astype(np.float32)
        return x, np.eye(len(LABELS), dtype=np.float32)[labels], weights

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._draw()


class EpochScores(keras.callbacks.Callback):
    """Adds the hook's numbers to the epoch logs (and so to the history)."""

    def __init__(self, hook: EpochHook) -> None:
        super().__init__()
        self.hook = hook

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = self.hook(epoch, self.model)
        if logs is not None:
            logs.update(values)
        print("  " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)


def member_files(k: int) -> tuple[str, str]:
    """(TFLite, Keras) file names of the ``k``-th network of a model folder: the first keeps the
    names single-network models always had."""
    stem = "mask_classifier" if k == 0 else f"mask_classifier_{k + 1}"
    return f"{stem}.tflite", f"{stem}.keras"


def export_classifier(members: Sequence[tuple[keras.Model, Recipe]], out: Path, decisions: dict | None = None) -> None:
    """Write each network as a .keras file (no optimizer state) and an fp32 TFLite file, and
    labels.json: the preprocessing and decision contract the server reads. Several members make
    an ensemble (their softmax outputs averaged); they must share the crop margin."""
    margins = {recipe.margin for _, recipe in members}
    if len(margins) != 1:
        raise ValueError(f"ensemble members must share the crop margin, got {sorted(margins)}")
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for k, (model, recipe) in enumerate(members):
        tflite_file, keras_file = member_files(k)
        with tempfile.TemporaryDirectory() as tmp:
            # A compiled model saves its optimizer state too; reloading without compiling drops it.
            model.save(Path(tmp) / keras_file)
            clean = keras.saving.load_model(Path(tmp) / keras_file, compile=False)
        clean.save(out / keras_file)
        clean.export(str(out / tflite_file), format="litert", verbose=False)
        entries.append({"model_file": tflite_file, "keras_file": keras_file, "input_size": recipe.size,
                        "alpha": recipe.alpha})
    written = {name for k in range(len(members)) for name in member_files(k)}
    for stray in out.glob("mask_classifier_*.*"):  # a smaller model replacing an ensemble
        if stray.name not in written:
            stray.unlink()
    contract = {
        "labels": list(LABELS),
        "crop_margin": margins.pop(),
        "crop": "square around the face box, side = longer box side * (1 + 2 * crop_margin); "
                "outside the image the edge repeats (webapp/vision/crop.py), cut at each member's input size",
        "color": "RGB",
        "scaling": "x / 127.5 - 1 (float32 in [-1, 1])",
        "architecture": "MobileNetV2 (ImageNet) + global average pooling + dropout + dense softmax",
        "members": entries,
        "combine": "mean of the members' softmax outputs, then the temperature and decision offsets",
        **(decisions or {}),
    }
    (out / LABELS_FILE).write_text(json.dumps(contract, indent=2) + "\n")
