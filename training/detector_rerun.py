"""Record how well the detector's training command reproduces the shipped detector.

The model card must say what the training command costs on the 2-core CPU and that running it
again gives the same detector within noise. TensorFlow's CPU kernels are not bit-reproducible
across runs even with a fixed seed, so the honest evidence is a second run of the same command
measured the same way: its wall time, the operating point it chose on the tune images and its
validation results with the shipped classifier. This module adds such a run to
``detector_metrics.json`` (``reruns``) and re-renders the model card, where it is shown next to
the shipped run. Usage::

    python -m training.train_detector --out runs/detector-model-rerun --work runs/detector-rerun
                                        # the shipped detector's command (model card), into runs/
    python -m training.evaluate --model DIR_WITH_ITS_DETECTOR ... --split val --json runs/eval-rerun-kaggle.json
    python -m training.detector_rerun runs/detector-model-rerun --eval runs/eval-rerun-kaggle.json \\
        runs/eval-rerun-maskon.json

A new training (or ``--retune``) of the shipped detector rewrites ``detector_metrics.json`` and so
drops the recorded re-runs: they describe the detector they were compared with.
"""

from __future__ import annotations

import argparse
import filecmp
import json
from pathlib import Path
from typing import Any, Sequence

from training.detector_report import METRICS_FILE
from webapp.vision.trained_detector import DETECTOR_FILE

# What a run records about itself rather than its recipe (fields both records have must otherwise agree;
# a field added to the training command after the shipped run has no value there to compare).
OUTCOME_KEYS = ("commands", "train_seconds", "other_seconds", "retune_seconds", "rebuild_max_abs_diff",
                "tensorflow", "keras", "cv")  # "cv": where the operating point was read (compared below)
# What a re-run row shows of an evaluation (training.evaluate --json, the trained detector's row).
EVAL_KEYS = ("map50", "map50_min32", "precision", "detections_per_image")


def evaluation_summary(ev: dict[str, Any]) -> dict[str, Any]:
    """The trained detector's headline numbers from a ``training.evaluate --json`` file."""
    row = next((r for r in ev["rows"] if r["detector"] == "trained"), None)
    if row is None:
        raise ValueError(f"{ev['command']!r} did not evaluate the trained detector")
    words = ev["command"].split()  # a detector was evaluated on --images DATASET/images
    dataset = Path(words[words.index("--images") + 1]).parent.name
    return {"dataset": dataset, "images": ev["images"], **{k: row[k] for k in EVAL_KEYS},
            "ap50_mask_incorrect": row["ap50"]["mask_incorrect"], "recall_min32": row["recall_min32"]}


def run_summary(metrics: dict[str, Any], evaluations: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row of the reproduction table: command, time, tune operating point, evaluations."""
    run, tuning = metrics["run"], metrics["tuning"]
    return {"commands": run["commands"], "train_seconds": run["train_seconds"], "other_seconds": run["other_seconds"],
            "tune": {k: tuning[k] for k in ("still_side", "still_mirror", "threshold", "precision", "recall")},
            "evaluations": [evaluation_summary(ev) for ev in evaluations]}


def record_rerun(model_dir: Path, rerun_dir: Path, eval_files: Sequence[Path]) -> dict[str, Any]:
    """Add the run in ``rerun_dir`` (and its evaluations) to ``model_dir``'s detector metrics."""
    path = model_dir / METRICS_FILE
    shipped = json.loads(path.read_text())
    rerun = json.loads((rerun_dir / METRICS_FILE).read_text())
    differ = sorted(k for k in shipped["run"].keys() & rerun["run"].keys()
                    if k not in OUTCOME_KEYS and shipped["run"][k] != rerun["run"][k])
    # a cross-validation folder or a detector_metrics.json that recorded it: the same one chose both points
    chose = [m["tuning"].get("cv", {}).get("command") for m in (shipped, rerun)]
    if chose[0] != chose[1]:
        differ.append("the cross-validation that chose the operating point")
    if differ:
        raise ValueError(f"{rerun_dir} is not a re-run of the shipped recipe ({', '.join(differ)} differ)")
    entry = run_summary(rerun, [json.loads(Path(f).read_text()) for f in eval_files])
    entry["same_file"] = _same_bytes(model_dir / DETECTOR_FILE, rerun_dir / DETECTOR_FILE)
    shipped["reruns"] = [r for r in shipped.get("reruns", []) if r["commands"] != entry["commands"]] + [entry]
    path.write_text(json.dumps(shipped, indent=2) + "\n")
    return entry


def _same_bytes(a: Path, b: Path) -> bool | None:
    """Whether two files hold the same bytes (None when either is missing)."""
    return filecmp.cmp(a, b, shallow=False) if a.is_file() and b.is_file() else None


def rerun_lines(m: dict[str, Any], shipped_evals: Sequence[dict[str, Any]]) -> list[str]:
    """The model card's reproduction table from the detector metrics ``m`` and the shipped
    detector's evaluations (both already read by the card): the shipped run, then each re-run."""
    if not m.get("reruns"):
        return []
    rows = [("shipped", run_summary(m, shipped_evals))] + [("re-run", r) for r in m["reruns"]]
    L = ["| run | command | training steps | data, export, threshold | "
         "threshold / precision / recall where chosen (tune or out of fold) | "
         "validation: mAP@0.5 all / ≥ 32 px / AP mask_incorrect / precision / boxes per image | "
         f"`{DETECTOR_FILE}` |",
         "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        t = r["tune"]
        evals = "; ".join(f"{e['dataset']} ({e['images']}): {e['map50']:.3f} / {e['map50_min32']:.3f} / "
                          f"{e['ap50_mask_incorrect']:.3f} / {e['precision']:.3f} / {e['detections_per_image']:.3f}"
                          for e in r["evaluations"])
        commands = " then ".join(f"`{c}`" for c in r["commands"])
        same = "shipped" if r is rows[0][1] else {None: "–", True: "same bytes", False: "differs"}[r.get("same_file")]
        L.append(f"| {name} | {commands} | {r['train_seconds'] / 60:.0f} min | {r['other_seconds']:.0f} s | "
                 f"{t['threshold']:.2f} / {t['precision']:.3f} / {t['recall']:.3f} | {evals} | {same} |")
    return ["## Reproducing it", "",
            "The shipped detector's training run again with the same seed — its own command, and the default "
            "command, which reads the same operating point from the shipped `detector_metrics.json` — timed on "
            "the 2-core CPU and evaluated like the shipped detector, with the shipped classifier (`python -m "
            "training.detector_rerun`). TensorFlow does not promise bit-identical CPU results across machines; "
            "the last column says whether this one wrote the shipped file's bytes:", ""] + L + [""]


def main(argv: list[str] | None = None) -> int:
    from training.report import write_model_card

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rerun", type=Path, help="--out folder of the re-run (holds its detector_metrics.json)")
    p.add_argument("--eval", type=Path, nargs="*", default=[], help="training.evaluate --json files of the re-run")
    p.add_argument("--model", type=Path, default=Path("model"), help="the shipped model folder")
    args = p.parse_args(argv)
    try:
        record_rerun(args.model, args.rerun, args.eval)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise SystemExit(f"cannot record {args.rerun}: {exc}") from exc
    write_model_card(args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
