"""Serving side of the mask classifier: fp32 TFLite files run by LiteRT, no TensorFlow.

``labels.json`` next to the model is the contract written at training time: preprocessing
(label order, crop margin, scaling), the networks (``members``: one file and input side each)
and the decisions chosen on out-of-fold predictions (``training.crossval``): the temperature
that makes ``score`` a calibrated probability, whether a face is also read mirrored, per-class
decision offsets, and the probability below which a face is "unsure". A retrained model needs
no code change.

Several members make an ensemble: each reads the face at its own input side and their raw
softmax outputs are averaged before the temperature and offsets, exactly as the ensemble was
cross-validated (``training.ensemble_cv``). A narrow backbone at 224 px and a wide one at
160 px see a face differently, and together they decide large faces better than either.

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
from typing import Any, Mapping, Sequence

import numpy as np

from webapp.vision.crop import Box, crop_faces
from webapp.vision.labels import LABELS
from webapp.vision.litert import InterpreterUnavailable, load_interpreter

MODEL_FILE = "mask_classifier.tflite"
LABELS_FILE = "labels.json"

# Model input batches by input side: float32 (N, S, S, 3) crops of the same faces, one per
# distinct member input side (``MaskClassifier.crop`` makes them).
Inputs = Mapping[int, np.ndarray]


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


def contract_members(contract: dict[str, Any]) -> list[dict[str, Any]]:
    """The networks of a contract: ``members``, or (models from before ensembles) the one
    ``mask_classifier.tflite`` at the top-level ``input_size``."""
    if "members" in contract:
        return contract["members"]
    return [{"model_file": MODEL_FILE, "input_size": contract["input_size"], "alpha": contract.get("alpha")}]


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
    for key in ("labels", "crop_margin"):
        if key not in contract:
            raise ModelFilesError(f"{path} lacks {key!r}")
    if "members" not in contract and "input_size" not in contract:
        raise ModelFilesError(f"{path} lacks 'members' (or, for a single network, 'input_size')")
    members = contract_members(contract)
    if not isinstance(members, list) or not members or not all(
            isinstance(m, dict) and isinstance(m.get("model_file"), str) and isinstance(m.get("input_size"), int)
            and m["input_size"] > 0 for m in members):
        raise ModelFilesError(f"{path}: 'members' must list networks as {{model_file, input_size}}")
    unknown = set(contract["labels"]) - set(LABELS)
    if unknown:
        raise ModelFilesError(f"{path} has unknown labels {sorted(unknown)}")
    return contract


class Member:
    """One network of the classifier: its TFLite interpreter and input side.

    One interpreter is not thread-safe, so calls are serialised with a lock; the server runs
    one inference worker anyway.
    """

    def __init__(self, path: Path, input_size: int, n_labels: int, threads: int) -> None:
        self.path, self.input_size = path, input_size
        if not path.is_file():
            raise ModelFilesError(f"missing {path}")
        try:
            self._interpreter = load_interpreter(path, threads)
        except InterpreterUnavailable as exc:
            raise ModelFilesError(str(exc)) from None
        except ValueError as exc:
            raise ModelFilesError(f"cannot load {path}: {exc}") from None
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        if tuple(self._input["shape"][1:]) != (input_size, input_size, 3) \
                or int(self._output["shape"][-1]) != n_labels:
            raise ModelFilesError(f"{path} takes {list(self._input['shape'])} and gives "
                                  f"{list(self._output['shape'])}; the contract says {input_size} px, "
                                  f"{n_labels} labels")
        if int(self._input["shape"][0]) != 1:
            self._interpreter.resize_tensor_input(self._input["index"], [1, input_size, input_size, 3])
            self._interpreter.allocate_tensors()
        self._lock = threading.Lock()

    def raw_proba(self, crops: np.ndarray) -> np.ndarray:
        """The network's own softmax output for crops of shape (N, S, S, 3)."""
        size = self.input_size
        if crops.ndim != 4 or crops.shape[1:] != (size, size, 3):
            raise ValueError(f"{self.path.name}: expected crops of shape (N, {size}, {size}, 3), got {crops.shape}")
        out = np.zeros((crops.shape[0], int(self._output["shape"][-1])), np.float32)
        # One face per invoke: on this CPU a batch brings no per-face gain (bench/classifier.py),
        # and a fixed input shape avoids re-planning the interpreter whenever the face count changes.
        with self._lock:
            for i in range(crops.shape[0]):
                self._interpreter.set_tensor(self._input["index"], np.ascontiguousarray(crops[i:i + 1], np.float32))
                self._interpreter.invoke()
                out[i] = self._interpreter.get_tensor(self._output["index"])[0]
        return out


class MaskClassifier:
    """Classifies faces from model inputs (``Inputs``: crops per input side, ``crop``)."""

    def __init__(self, model_dir: Path, threads: int = 1) -> None:
        self.model_dir = Path(model_dir)
        self.contract = read_contract(self.model_dir)
        self.labels: tuple[str, ...] = tuple(self.contract["labels"])
        self.margin: float = float(self.contract["crop_margin"])
        where = self.model_dir / LABELS_FILE
        self.still = Decisions.from_contract(self.contract, len(self.labels), where)
        self.live = Decisions.from_contract(self.contract["live"], len(self.labels), where) \
            if "live" in self.contract else self.still
        self.unsure_below = float(self.contract.get("unsure_below", 0.0))  # older models: never unsure
        self.members = tuple(Member(self.model_dir / m["model_file"], int(m["input_size"]), len(self.labels), threads)
                             for m in contract_members(self.contract))
        self.input_sizes: tuple[int, ...] = tuple(dict.fromkeys(m.input_size for m in self.members))

    def crop(self, image: np.ndarray, boxes: Sequence[Box]) -> dict[int, np.ndarray]:
        """The model inputs for the faces ``boxes`` of one RGB image: each side cut from the
        image itself (not resized from another side), as in training."""
        return {size: crop_faces(image, boxes, size, self.margin) for size in self.input_sizes}

    def raw_proba(self, inputs: Inputs) -> np.ndarray:
        """The members' mean softmax output, shape (N, len(labels))."""
        if not isinstance(inputs, Mapping) or set(inputs) != set(self.input_sizes):
            raise ValueError(f"expected crops at input sides {list(self.input_sizes)} "
                             "(a mapping side -> batch; MaskClassifier.crop makes it)")
        return np.mean([m.raw_proba(inputs[m.input_size]) for m in self.members], axis=0).astype(np.float32)

    def decisions(self, live: bool) -> Decisions:
        return self.live if live else self.still

    def predict_proba(self, inputs: Inputs, live: bool = False) -> np.ndarray:
        """Calibrated class probabilities, shape (N, len(labels)): the mirrored crop averaged in
        where the contract says so, then softmax(log p / temperature)."""
        d = self.decisions(live)
        probs = self.raw_proba(inputs)
        if d.flip_average:
            probs = (probs + self.raw_proba({s: np.ascontiguousarray(x[:, :, ::-1]) for s, x in inputs.items()})) / 2
        if d.temperature == 1.0:
            return probs
        z = np.log(np.clip(probs, 1e-7, 1.0)) / d.temperature
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def decide(self, probs: np.ndarray, live: bool = False) -> np.ndarray:
        """Label index per row: argmax of log-probabilities plus the contract's class offsets."""
        return (np.log(np.clip(probs, 1e-7, 1.0)) + np.asarray(self.decisions(live).offsets)).argmax(axis=1)

    def classify(self, inputs: Inputs, live: bool = False) -> list[Prediction]:
        probs = self.predict_proba(inputs, live)
        return [Prediction(self.labels[i], float(p[i]), tuple(float(v) for v in p), bool(p[i] < self.unsure_below))
                for i, p in zip(self.decide(probs, live), probs)]
