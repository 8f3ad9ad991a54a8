"""Classification metrics in the JSON shape DESIGN.md fixes for the ``classifier`` section."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from webapp.vision.labels import LABELS

# Faces are bucketed by the shorter side of their true box, as in the acceptance criteria.
SIZE_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("<16px", 0, 16), ("16-31px", 16, 32), (">=32px", 32, 1 << 30))


def classifier_section(y_true: Sequence[str], y_pred: Sequence[str],
                       labels: Sequence[str] = LABELS) -> dict[str, Any]:
    """Accuracy, macro-F1 over the labels present, per-class P/R/F1/support and confusion matrix.

    Macro-F1 averages only the labels that occur in ``y_true`` (a two-class dataset must not be
    penalised for a third class it cannot contain); per_class lists every label.
    """
    y_true, y_pred = list(y_true), list(y_pred)
    if not y_true:
        return {"accuracy": None, "macro_f1": None, "per_class": {}, "confusion": [],
                "labels": list(labels), "n": 0}
    present = [lab for lab in labels if lab in set(y_true)]
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(labels),
                                                 zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "per_class": {label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                              "support": int(s[i])} for i, label in enumerate(labels)},
        "confusion": confusion_matrix(y_true, y_pred, labels=list(labels)).tolist(),
        "labels": list(labels),
        "n": len(y_true),
    }


def number_cell(v: float | None, digits: int = 3) -> str:
    """A table cell for a share or score that may be undefined (no faces of that kind): "–"."""
    return "–" if v is None else f"{v:.{digits}f}"


def size_bucket(short_side: float) -> str:
    return next(name for name, lo, hi in SIZE_BUCKETS if lo <= short_side < hi)


def format_report(section: dict[str, Any], title: str = "") -> str:
    """Human-readable classification report and confusion matrix."""
    if not section.get("n"):
        return f"{title}: no faces"
    labels = section["labels"]
    lines = [f"{title}  (n={section['n']}, accuracy {section['accuracy']:.3f}, "
             f"macro-F1 {section['macro_f1']:.3f})" if title else
             f"n={section['n']}, accuracy {section['accuracy']:.3f}, macro-F1 {section['macro_f1']:.3f}",
             f"  {'label':16s} {'precision':>9s} {'recall':>7s} {'f1':>6s} {'support':>8s}"]
    for label in labels:
        c = section["per_class"][label]
        lines.append(f"  {label:16s} {c['precision']:9.3f} {c['recall']:7.3f} {c['f1']:6.3f} "
                     f"{c['support']:8d}")
    lines.append("  confusion (rows true, columns predicted): " + " / ".join(labels))
    for label, row in zip(labels, section["confusion"]):
        lines.append(f"  {label:16s} " + " ".join(f"{v:6d}" for v in row))
    return "\n".join(lines)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the classes present in ``y_true`` (integer labels)."""
    return float(f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0))
