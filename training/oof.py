"""Out-of-fold predictions of a cross-validation run: scores per fold, bootstrap intervals,
the temperature that calibrates the scores and the decision rule.

Everything chosen here (temperature, class offsets) is chosen on the *other* folds and scored on
the held-out one ("cross-fitting"), so the reported numbers are not flattered by the choice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from training.datasets import CHANDRIKA, IMFD, KAGGLE, MASKON
from training.metrics import SIZE_BUCKETS, classifier_section, size_bucket
from webapp.vision.labels import LABELS, MASK_INCORRECT

INCORRECT = LABELS.index(MASK_INCORRECT)
# What the acceptance criteria of the classifier measure, in the order tables show them.
KEYS = ("kaggle_macro_f1", "kaggle_incorrect_recall", "kaggle_incorrect_precision",
        "kaggle_min32_macro_f1", "maskon_accuracy", "chandrika_accuracy", "imfd_accuracy")
OFFSET_GRID = np.log([0.5, 0.7, 1.0, 1.4, 2.0, 3.0])  # class prior shifts tried by the decision rule
# Below this calibrated probability a face is "unsure": drawn grey, never counted (README).
# On calibrated scores it means "the model is wrong at least 4 times in 10 on faces like this".
UNSURE_BELOW = 0.6


@dataclass
class OutOfFold:
    probs: np.ndarray  # (N, 3) served TFLite probabilities
    probs_flip: np.ndarray  # the same faces mirrored
    labels: np.ndarray
    sources: np.ndarray
    groups: np.ndarray
    short_sides: np.ndarray
    fold: np.ndarray
    histories: list[dict[str, list[float]]]
    seconds: list[float]


def load_folds(folder: Path, folds: int) -> OutOfFold:
    parts = [np.load(folder / f"fold{k}.npz", allow_pickle=False) for k in range(folds)]

    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts])

    return OutOfFold(cat("probs"), cat("probs_flip"), cat("labels"), cat("sources"), cat("groups"),
                     cat("short_sides"), cat("fold"), [json.loads(str(p["history"])) for p in parts],
                     [float(p["seconds"]) for p in parts])


def _confusion(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    k = len(LABELS)
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def _macro_f1(cm: np.ndarray) -> float | None:
    """Macro-F1 over the classes present (as ``metrics.classifier_section``), from a confusion matrix."""
    support, predicted, hit = cm.sum(1), cm.sum(0), np.diag(cm)
    present = support > 0
    if not present.any():
        return None
    f1 = np.where(support + predicted > 0, 2 * hit / np.maximum(support + predicted, 1), 0.0)
    return float(f1[present].mean())


def _accuracy(cm: np.ndarray) -> float | None:
    return float(np.trace(cm) / cm.sum()) if cm.sum() else None


def acceptance_numbers(y: np.ndarray, pred: np.ndarray, sources: np.ndarray,
                       sides: np.ndarray) -> dict[str, float | None]:
    """The classifier's acceptance numbers for one set of predictions (None where no faces).

    Computed from confusion matrices with numpy: the bootstrap calls this thousands of times.
    """
    kaggle = sources == KAGGLE
    cm = _confusion(y[kaggle], pred[kaggle])
    return {
        "kaggle_macro_f1": _macro_f1(cm),
        "kaggle_incorrect_recall": float(cm[INCORRECT, INCORRECT] / cm[INCORRECT].sum())
        if cm[INCORRECT].sum() else None,
        "kaggle_incorrect_precision": float(cm[INCORRECT, INCORRECT] / cm[:, INCORRECT].sum())
        if cm[:, INCORRECT].sum() else None,
        "kaggle_min32_macro_f1": _macro_f1(_confusion(y[kaggle & (sides >= 32)], pred[kaggle & (sides >= 32)])),
        "maskon_accuracy": _accuracy(_confusion(y[sources == MASKON], pred[sources == MASKON])),
        "chandrika_accuracy": _accuracy(_confusion(y[sources == CHANDRIKA], pred[sources == CHANDRIKA])),
        "imfd_accuracy": _accuracy(_confusion(y[sources == IMFD], pred[sources == IMFD])),
    }


def decide(probs: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """Class decision: argmax of the log-probabilities plus per-class offsets (0 = argmax)."""
    logp = np.log(np.clip(probs, 1e-7, 1.0))
    return (logp + (0 if offsets is None else offsets)).argmax(1)


def with_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the model's logits up to a constant, scaled by 1/T."""
    z = np.log(np.clip(probs, 1e-7, 1.0)) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the negative log-likelihood of the true labels."""
    def nll(t: float) -> float:
        return float(-np.log(with_temperature(probs, t)[np.arange(len(y)), y] + 1e-12).mean())
    return float(minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded").x)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: |accuracy - confidence| per confidence bin, weighted by the bin's faces."""
    return float(sum(r["n"] * abs(r["accuracy"] - r["confidence"]) for r in reliability(probs, y, bins)) / len(y))


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per confidence bin: mean confidence, accuracy and face count (for the reliability plot)."""
    conf, correct = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    return [{"confidence": float(conf[which == b].mean()), "accuracy": float(correct[which == b].mean()),
             "n": int((which == b).sum())} for b in range(bins) if (which == b).any()]


def choose_offsets(probs: np.ndarray, y: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Per-class log-offsets (with_mask fixed at 0) maximising kaggle-facemask macro-F1."""
    kaggle = sources == KAGGLE
    best, best_f1 = np.zeros(len(LABELS)), -1.0
    for a, b in product(OFFSET_GRID, OFFSET_GRID):
        offsets = np.array([0.0, a, b])
        f1 = _macro_f1(_confusion(y[kaggle], decide(probs[kaggle], offsets))) or 0.0
        if f1 > best_f1 + 1e-9:
            best, best_f1 = offsets, f1
    return best


def cross_fit(oof: OutOfFold, probs: np.ndarray,
              choose: Callable[[np.ndarray, np.ndarray, np.ndarray], Any],
              apply: Callable[[np.ndarray, Any], np.ndarray]) -> np.ndarray:
    """Choose a parameter on all folds but k, apply it to fold k, for every k."""
    out: np.ndarray | None = None
    for k in np.unique(oof.fold):
        held = oof.fold == k
        part = apply(probs[held], choose(probs[~held], oof.labels[~held], oof.sources[~held]))
        if out is None:
            out = np.empty((len(probs),) + part.shape[1:], part.dtype)
        out[held] = part
    return out


def per_fold(oof: OutOfFold, pred: np.ndarray) -> list[dict[str, float | None]]:
    return [acceptance_numbers(oof.labels[m], pred[m], oof.sources[m], oof.short_sides[m])
            for m in (oof.fold == k for k in np.unique(oof.fold))]


def mean_std(rows: list[dict[str, float | None]], keys: Sequence[str] = KEYS) -> dict[str, dict[str, float | None]]:
    out = {}
    for key in keys:
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = {"mean": float(np.mean(values)) if values else None,
                    "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}
    return out


def bootstrap(oof: OutOfFold, pred: np.ndarray, rounds: int = 1000, seed: int = 0
              ) -> dict[str, list[float | None]]:
    """95 % intervals of the pooled out-of-fold numbers, resampling whole images per source."""
    rng = np.random.default_rng(seed)
    keys = np.char.add(np.char.add(oof.sources.astype(str), "/"), oof.groups.astype(str))
    uniq, inverse = np.unique(keys, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(uniq))]
    by_source: dict[str, np.ndarray] = {}
    for i, key in enumerate(uniq):
        by_source.setdefault(key.split("/", 1)[0], []).append(i)
    draws: dict[str, list[float]] = {k: [] for k in KEYS}
    for _ in range(rounds):
        chosen = np.concatenate([members[g] for src, gs in by_source.items()
                                 for g in rng.choice(gs, len(gs))])
        numbers = acceptance_numbers(oof.labels[chosen], pred[chosen], oof.sources[chosen],
                                     oof.short_sides[chosen])
        for k, v in numbers.items():
            if v is not None:
                draws[k].append(v)
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else [None, None]
            for k, v in draws.items()}


def by_size(oof: OutOfFold, pred: np.ndarray) -> dict[str, dict[str, Any]]:
    """kaggle-facemask per face size: per-class F1 and support, pooled out-of-fold."""
    kaggle = oof.sources == KAGGLE
    buckets = np.array([size_bucket(s) for s in oof.short_sides])
    names = np.array(LABELS)
    return {name: classifier_section(names[oof.labels[kaggle & (buckets == name)]],
                                     names[pred[kaggle & (buckets == name)]])
            for name, _, _ in SIZE_BUCKETS}


def ranking_ap(probs: np.ndarray, y: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, float | None]:
    """Average precision per class of the served ranking on true face boxes (None: no such face).

    As in the end-to-end AP (``training.evaluate``), a face competes for a class only when it
    was decided as that class, ranked by its calibrated score; recall counts every true face of
    the class. F1 sees only the decisions; this sees whether the confident ones are the right
    ones. Written here rather than with scikit-learn's ``average_precision_score``, which ranks
    every face for every class and so would not measure what is served.
    """
    out: dict[str, float | None] = {}
    for c, name in enumerate(LABELS):
        n_true = int((y[mask] == c).sum())
        chosen = np.flatnonzero(mask & (pred == c))
        hits = y[chosen[np.argsort(-probs[chosen, c], kind="stable")]] == c
        precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        out[name] = float((precision_at * hits).sum() / n_true) if n_true else None
    return out


def ranking_report(oof: OutOfFold, calibrated: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Per-class ranking AP on kaggle-facemask, mean ± std over folds, all faces and >= 32 px."""
    kaggle = oof.sources == KAGGLE
    out = {}
    for subset, extra in (("all", kaggle), ("min32", kaggle & (oof.short_sides >= 32))):
        folds = [ranking_ap(calibrated, oof.labels, pred, extra & (oof.fold == k)) for k in np.unique(oof.fold)]
        out[subset] = mean_std(folds, LABELS)
    return out


def worst_errors(oof: OutOfFold, probs: np.ndarray, pred: np.ndarray, n: int = 10) -> list[dict[str, Any]]:
    """The most confident wrong out-of-fold decisions (the model card's failure cases)."""
    wrong = np.flatnonzero(pred != oof.labels)
    conf = probs[wrong, pred[wrong]]
    return [{"source": str(oof.sources[i]), "image": str(oof.groups[i]), "short_side": float(oof.short_sides[i]),
             "true": LABELS[oof.labels[i]], "predicted": LABELS[pred[i]], "probability": float(probs[i, pred[i]])}
            for i in wrong[np.argsort(-conf)][:n]]


def unsure_share(probs: np.ndarray, y: np.ndarray, pred: np.ndarray, sources: np.ndarray,
                 threshold: float = UNSURE_BELOW) -> dict[str, float | None]:
    """How many kaggle-facemask faces the unsure rule holds back, and how often the model is
    right on the faces it holds back and on the rest."""
    kaggle = sources == KAGGLE
    unsure = probs[np.arange(len(pred)), pred] < threshold
    right = pred == y

    def rate(mask: np.ndarray) -> float | None:
        return float(right[mask].mean()) if mask.any() else None
    return {"threshold": threshold, "share": float(unsure[kaggle].mean()) if kaggle.any() else None,
            "accuracy_unsure": rate(kaggle & unsure), "accuracy_sure": rate(kaggle & ~unsure)}


def epoch_curve(oof: OutOfFold, key: str = "fold_kaggle_macro_f1") -> list[float]:
    """Mean over folds of a per-epoch held-out score (Keras, before export)."""
    curves = [h[key] for h in oof.histories if key in h]
    return [float(v) for v in np.mean(curves, axis=0)] if curves else []


def decision_report(oof: OutOfFold, calibrated: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Scores of one decision rule's out-of-fold decisions: per fold, mean ± std, intervals,
    per face size, and its most confident mistakes."""
    folds = per_fold(oof, pred)
    return {"per_fold": folds, "mean_std": mean_std(folds), "bootstrap95": bootstrap(oof, pred),
            "by_size": by_size(oof, pred), "ranking_ap": ranking_report(oof, calibrated, pred),
            "worst_errors": worst_errors(oof, calibrated, pred)}


def summarise(oof: OutOfFold, config: dict[str, Any]) -> dict[str, Any]:
    """Everything the model card and the candidate comparison need from one recipe's folds."""
    variants = {"plain": oof.probs, "flip_tta": (oof.probs + oof.probs_flip) / 2}
    result: dict[str, Any] = {"config": config, "faces": int(len(oof.labels)),
                              "fold_seconds": oof.seconds, "epoch_curve": epoch_curve(oof),
                              "variants": {}}
    for name, probs in variants.items():
        # Temperature and decision offsets are cross-fitted: chosen on 4 folds, used on the 5th.
        calibrated = cross_fit(oof, probs, lambda p, y, s: fit_temperature(p, y), with_temperature)
        offsets_pred = cross_fit(oof, calibrated, choose_offsets, decide)
        argmax_pred = decide(probs)
        temperature = fit_temperature(probs, oof.labels)
        result["variants"][name] = {
            "argmax": decision_report(oof, calibrated, argmax_pred),
            "offsets": {**decision_report(oof, calibrated, offsets_pred),
                        "chosen_on_all_folds": choose_offsets(
                            with_temperature(probs, temperature), oof.labels, oof.sources).tolist()},
            "calibration": {
                "temperature": temperature,
                "ece_raw": expected_calibration_error(probs, oof.labels),
                "ece_calibrated_crossfit": expected_calibration_error(calibrated, oof.labels),
                "reliability_raw": reliability(probs, oof.labels),
                "reliability_calibrated": reliability(calibrated, oof.labels),
                "unsure": {rule: unsure_share(calibrated, oof.labels, pred, oof.sources)
                           for rule, pred in (("argmax", argmax_pred), ("offsets", offsets_pred))},
            },
        }
    return result


def better_rule(variants: dict[str, Any], variant: str) -> str:
    """``offsets`` where the out-of-fold class offsets raise that variant's mean kaggle macro-F1."""
    section = variants[variant]
    return "offsets" if _kaggle_f1(section["offsets"]) > _kaggle_f1(section["argmax"]) else "argmax"


def served_variant(variants: dict[str, Any], mirror: bool = True) -> tuple[str, str]:
    """(variant, rule) still images are served with, from a model's folds: the mirrored crop
    averaged in only where it may be (``mirror``) and raises the mean kaggle macro-F1 with
    argmax, then ``better_rule``."""
    flip = mirror and _kaggle_f1(variants["flip_tta"]["argmax"]) > _kaggle_f1(variants["plain"]["argmax"])
    variant = "flip_tta" if flip else "plain"
    return variant, better_rule(variants, variant)


def may_mirror(config: dict[str, Any]) -> bool:
    """Whether a run's model may read still images mirrored too: a single network may; an
    ensemble may not, its mirrored pair costing twice its ~2.5 ms per face (bench/classifier.py),
    over the 3 ms budget."""
    return "members" not in config


def _kaggle_f1(report: dict[str, Any]) -> float:
    return report["mean_std"]["kaggle_macro_f1"]["mean"]


def candidate_summary(cv: dict[str, Any]) -> dict[str, Any]:
    """What the model card shows of a compared candidate (its recipe, the mean ± std, the
    per-size table and the ranking AP of each serving variant): a whole ``cv.json`` is ~1600 lines of per-fold
    detail that belongs in its own folder, not in every shipped ``metrics.json``."""
    return {"config": cv["config"],
            "variants": {name: {rule: {k: report[k] for k in ("mean_std", "by_size", "ranking_ap") if k in report}
                                for rule, report in variant.items() if rule in ("argmax", "offsets")}
                         for name, variant in cv["variants"].items()}}
