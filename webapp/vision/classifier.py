"""Serving side of the mask classifier: the fp32 TFLite file run by LiteRT, no TensorFlow.

``labels.json`` next to the model is the contract written at training time: preprocessing
(label order, input size, crop margin, scaling) and the decisions chosen on out-of-fold
predictions (``training.crossval``): the temperature that makes ``score`` a calibrated
probability, whether a face is also read mirrored, per-class decision offsets, and the
probability below which a face is "unsure". A retrained model needs no code change.

Live video may use its own decisions (``live`` in the contract): a single crop instead of the
mirrored pair halves the classifier's cost per frame, and the tracker's vote over a person's
frames does what the mirror does for a still image; the single crop then has its own
temperature and offsets, chosen on the same out-of-fold predictions.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from webapp.vision.labels import LABELS
from webapp.vision.litert import InterpreterUnavailable, load_interpreter

MODEL_FILE = "mask_classifier.tflite"
LABELS_FILE = "labels.json"


class ModelFilesError(RuntimeError):
    """The model folder is missing a file or holds one that cannot be loaded."""


@dataclass(frozen=True)
class Decisions:
    """How probabilities are read for one kind of input (still images, or live video)."""

    temperature: float = 1.0
    flip_average: bool = False
    offsets: tuple[float, ...] = ()

    @classmethod
    def from_contract(cls, section: dict[str, Any], n_labels: int, where: Path) -> "Decisions":
        # Models trained before calibration have none of these keys: plain argmax.
        decisions = cls(float(section.get("temperature", 1.0)), bool(section.get("flip_average", False)),
                        tuple(float(v) for v in section.get("decision_offsets", [0.0] * n_labels)))
        if decisions.temperature <= 0 or len(decisions.offsets) != n_labels:
            raise ModelFilesError(f"{where}: bad temperature or decision_offsets")
        return decisions


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float  # calibrated probability of ``label``
    probs: tuple[float, ...]  # calibrated, in ``MaskClassifier.labels`` order
    unsure: bool = False  # score below the model's unsure threshold: not counted, drawn grey


def read_contract(model_dir: Path) -> dict[str, Any]:
    """The preprocessing contract (labels.json) of a model folder."""
    path = Path(model_dir) / LABELS_FILE
    try:
        contract = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFilesError(f"missing {path}; train a model (python -m training.train) "
                              "or restore model/ from git") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFilesError(f"{path} is not valid JSON: {exc}") from None
    for key in ("labels", "input_size", "crop_margin"):
        if key not in contract:
            raise ModelFilesError(f"{path} lacks {key!r}")
    unknown = set(contract["labels"]) - set(LABELS)
    if unknown:
        raise ModelFilesError(f"{path} has unknown labels {sorted(unknown)}")
    return contract


class MaskClassifier:
    """Classifies batches of face crops (float32, N x S x S x 3, scaled by ``crop.to_model_input``).

    One interpreter is not thread-safe, so calls are serialised with a lock; the server runs
    one inference worker anyway.
    """

    def __init__(self, model_dir: Path, threads: int = 1) -> None:
        self.model_dir = Path(model_dir)
        self.contract = read_contract(self.model_dir)
        self.labels: tuple[str, ...] = tuple(self.contract["labels"])
        self.input_size: int = int(self.contract["input_size"])
        self.margin: float = float(self.contract["crop_margin"])
        where = self.model_dir / LABELS_FILE
        self.still = Decisions.from_contract(self.contract, len(self.labels), where)
        self.live = Decisions.from_contract(self.contract["live"], len(self.labels), where) \
            if "live" in self.contract else self.still
        self.unsure_below = float(self.contract.get("unsure_below", 0.0))  # older models: never unsure
        self.model_path = self.model_dir / MODEL_FILE
        if not self.model_path.is_file():
            raise ModelFilesError(f"missing {self.model_path}")
        try:
            self._interpreter = load_interpreter(self.model_path, threads)
        except InterpreterUnavailable as exc:
            raise ModelFilesError(str(exc)) from None
        except ValueError as exc:
            raise ModelFilesError(f"cannot load {self.model_path}: {exc}") from None
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        if int(self._input["shape"][0]) != 1:
            self._interpreter.resize_tensor_input(self._input["index"], [1, self.input_size, self.input_size, 3])
            self._interpreter.allocate_tensors()
        self._lock = threading.Lock()

    def raw_proba(self, crops: np.ndarray) -> np.ndarray:
        """The network's own softmax output, shape (N, len(labels))."""
        size = self.input_size
        if crops.ndim != 4 or crops.shape[1:] != (size, size, 3):
            raise ValueError(f"expected crops of shape (N, {size}, {size}, 3), got {crops.shape}")
        n = crops.shape[0]
        out = np.zeros((n, len(self.labels)), np.float32)
        # One face per invoke: on this CPU a batch brings no per-face gain (bench/classifier.py),
        # and a fixed input shape avoids re-planning the interpreter whenever the face count changes.
        with self._lock:
            for i in range(n):
                self._interpreter.set_tensor(self._input["index"], np.ascontiguousarray(crops[i:i + 1], np.float32))
                self._interpreter.invoke()
                out[i] = self._interpreter.get_tensor(self._output["index"])[0]
        return out

    def decisions(self, live: bool) -> Decisions:
        return self.live if live else self.still

    def predict_proba(self, crops: np.ndarray, live: bool = False) -> np.ndarray:
        """Calibrated class probabilities, shape (N, len(labels)): the mirrored crop averaged in
        where the contract says so, then softmax(log p / temperature)."""
        d = self.decisions(live)
        probs = self.raw_proba(crops)
        if d.flip_average:
            probs = (probs + self.raw_proba(np.ascontiguousarray(crops[:, :, ::-1]))) / 2
        if d.temperature == 1.0:
            return probs
        z = np.log(np.clip(probs, 1e-7, 1.0)) / d.temperature
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def decide(self, probs: np.ndarray, live: bool = False) -> np.ndarray:
        """Label index per row: argmax of log-probabilities plus the contract's class offsets."""
        return (np.log(np.clip(probs, 1e-7, 1.0)) + np.asarray(self.decisions(live).offsets)).argmax(axis=1)

    def classify(self, crops: np.ndarray, live: bool = False) -> list[Prediction]:
        probs = self.predict_proba(crops, live)
        return [Prediction(self.labels[i], float(p[i]), tuple(float(v) for v in p), bool(p[i] < self.unsure_below))
                for i, p in zip(self.decide(probs, live), probs)]
