"""Cross-validation of a face-detector recipe on the kaggle-facemask training images.

Why: the detector's operating point and every detector candidate were judged on 78 tune images
(343 faces), and two runs of one recipe differ there by as much as two candidates do (README,
"Reproducing the shipped detector"). Here a recipe trains once per fold of the training images
(folds by image group, near-duplicates together, rare labels dealt round-robin), and the served
thorough pass (``--side`` px + mirror image) looks at the held-out fold, so every training face
gets one out-of-fold detection: about six times the tune set. The threshold is then chosen on the
pooled out-of-fold detections by the tune rule (the lowest with precision >= 0.93), and two recipes
are compared fold by fold on the same folds. The validation split is never touched.

    python -m training.detector_cv --name NAME [--folds 5] [-- train_detector flags]
    python -m training.detector_cv --name NAME --models runs/detector-cv/A --side 640
    python -m training.detector_cv --summarise runs/detector-cv/A [runs/detector-cv/B ...]

``--models`` trains nothing: it reads the held-out folds of a finished cross-validation again with
its fold detectors, served another way (a thorough pass at another ``--side``), so a serving change
is compared fold by fold with no training noise between the two.

Each fold is a ``python -m training.train_detector --folds N --fold K`` run in ``OUT/foldK``; it is
resumable: a finished fold (``foldK/oof.json``) is kept and an interrupted one continues from its
checkpoint. Precision and recall are the issue's (``training.detection_metrics.detector_recall``:
a face is found by a box at IoU >= 0.4, a box is right when it overlaps some face that much).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from training.datasets import Sample, read_rgb
from training.detection_metrics import RECALL_IOU, Truth, detector_recall
from training.detector_report import (
    MAX_CLOSEUP_DETECTIONS,
    METRICS_FILE,
    TARGET_PRECISION,
    Looks,
    closeup_detections,
    operating_point,
    same_pass,
    set_operating_point,
    tally,
    threshold_curve,
)
from training.metrics import SIZE_BUCKETS, size_bucket
from webapp.config import Settings
from webapp.vision.boxes import Detection, iou_matrix
from webapp.vision.labels import LABELS
from webapp.vision.trained_detector import TrainedDetector

log = logging.getLogger("training.detector_cv")
OOF_FILE = "oof.json"
CV_FILE = "cv.json"
DEFAULT_ROOT = Path("runs/detector-cv")
SHIPPED_THRESHOLD = 0.45  # tune-split choice, shipped before the cross-validated 0.50; runs are read there too
NEAR_IOU = 0.1  # a box overlapping a missed face at least this much (but under RECALL_IOU) was meant for it
MISS_CAUSES = ("score", "box", "unseen")


def out_of_fold(model_dir: Path, samples: Sequence[Sample], side: int) -> list[dict[str, Any]]:
    """Per held-out image: its true faces and the mirrored thorough pass's fused detections, before
    any threshold (down to ``trained_detector.MIRROR_FLOOR``), so thresholds can be swept later."""
    detector = TrainedDetector(model_dir, threads=2, still_side=side, still_mirror=True)
    rows = []
    for sample in tqdm(samples, desc="held-out fold", unit="img", leave=False):
        found = detector.mirrored_detections(read_rgb(sample.path))
        rows.append({"image": sample.path.name,
                     "truth": [[*map(float, f.box), f.label] for f in sample.faces],
                     "detections": [[*map(float, d.box), float(d.score)] for d in found]})
    return rows


def _truths(rows: Sequence[dict[str, Any]]) -> list[list[Truth]]:
    return [[Truth(tuple(t[:4]), t[4]) for t in r["truth"]] for r in rows]


def looks_of(rows: Sequence[dict[str, Any]]) -> Looks:
    """``rows`` as ``detector_report`` thresholds a mirrored pass's looks (fused faces, true boxes)."""
    return [([Detection(tuple(d[:4]), d[4]) for d in r["detections"]],
             np.array([t[:4] for t in r["truth"]], np.float32).reshape(-1, 4), 0, 0) for r in rows]


def read_at(rows: Sequence[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """The issue's detector numbers of ``rows`` at ``threshold``: recall per label and size,
    precision (boxes overlapping some face) and boxes per image."""
    return detector_recall(_truths(rows), [[tuple(d[:4]) for d in r["detections"] if d[4] >= threshold]
                                           for r in rows])


def miss_causes(rows: Sequence[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Why the faces a threshold misses are missed, per size bucket, and the large ones listed.

    Why: what the next recipe needs differs by cause. ``score``: a look overlaps the face at IoU
    >= 0.4 but scores under the threshold (the detector saw it, without confidence); ``box``: a box
    above the threshold overlaps it, but less than that (wrong size or place, or merged with a
    neighbour); ``unseen``: neither. A face with both a weak box and a misplaced confident one
    counts as ``score``.
    """
    counts = {b: dict.fromkeys(MISS_CAUSES, 0) for b, _, _ in SIZE_BUCKETS}
    large = []
    for r in rows:
        if not r["truth"]:
            continue
        truth = np.array([t[:4] for t in r["truth"]], np.float32)
        dets = np.array([d[:5] for d in r["detections"]], np.float32).reshape(-1, 5)
        iou = iou_matrix(truth, dets[:, :4])
        confident = dets[:, 4] >= threshold
        for i, t in enumerate(r["truth"]):
            if (iou[i] >= RECALL_IOU)[confident].any():
                continue
            weak = iou[i] >= RECALL_IOU
            cause = ("score" if weak.any() else "box" if (iou[i] >= NEAR_IOU)[confident].any() else "unseen")
            short = min(t[2] - t[0], t[3] - t[1])
            bucket = size_bucket(short)
            counts[bucket][cause] += 1
            if bucket == ">=32px":
                large.append({"image": r["image"], "box": [round(v, 1) for v in t[:4]], "label": t[4],
                              "cause": cause, "best_iou": round(float(iou[i].max(initial=0.0)), 3),
                              "best_score": round(float(dets[weak, 4].max(initial=0.0)), 3)})
    return {"threshold": threshold, "by_size": counts, "large": large}


def summarise(folder: Path) -> dict[str, Any]:
    """Pooled and per-fold numbers of a finished (or partly finished) cross-validation folder.

    The operating point is the tune rule's (``detector_report.operating_point``: the lowest threshold
    whose precision, each box matched to one face, reaches 0.93) on the pooled out-of-fold looks.
    """
    config = json.loads((folder / "config.json").read_text())
    folds = {k: json.loads((folder / f"fold{k}" / OOF_FILE).read_text())
             for k in range(config["folds"]) if (folder / f"fold{k}" / OOF_FILE).is_file()}
    if not folds:
        raise ValueError(f"{folder}: no finished fold yet")
    pooled = [row for rows in folds.values() for row in rows]
    curve = threshold_curve(looks_of(pooled))
    point = operating_point(curve)
    readings = {}
    for name, t in (("operating_point", point["threshold"]), ("shipped_threshold", SHIPPED_THRESHOLD)):
        per_fold = {}
        for k, rows in folds.items():
            at = tally(looks_of(rows), lambda d, t=t: d.score >= t)
            per_fold[k] = {"found": round(at["recall"] * sum(len(r["truth"]) for r in rows)),
                           "faces": sum(len(r["truth"]) for r in rows), "precision": at["precision"]}
        readings[name] = {"threshold": t, "pooled": read_at(pooled, t), "per_fold": per_fold,
                          "misses": miss_causes(pooled, t)}
    return {"config": config, "folds_done": sorted(folds), "images": len(pooled),
            "faces": sum(len(r["truth"]) for r in pooled), "curve": curve,
            "meets_precision": point["meets_precision"], "fold_seconds": _fold_seconds(folder, folds), **readings}


def _fold_seconds(folder: Path, folds: Sequence[int]) -> dict[int, float]:
    """Each finished fold's training time (steps, data, export and threshold), from its run record."""
    seconds = {}
    for k in folds:
        metrics = folder / f"fold{k}" / "model" / METRICS_FILE
        if metrics.is_file():
            run = json.loads(metrics.read_text())["run"]
            seconds[k] = run["train_seconds"] + run["other_seconds"]
    return seconds


def cv_command(folder: Path, config: dict[str, Any]) -> str:
    """The command that ran (or resumes) the cross-validation in ``folder``."""
    root = "" if folder.parent == DEFAULT_ROOT else f" --root {folder.parent}"
    if "models" in config:  # a serving variant read on another cross-validation's fold detectors
        source = Path(config["models"])
        return (f"{cv_command(source, json.loads((source / 'config.json').read_text()))} then "
                f"python -m training.detector_cv --name {folder.name} --models {source} --side {config['side']}{root}")
    flags = f" -- {' '.join(config['flags'])}" if config["flags"] else ""
    return (f"python -m training.detector_cv --name {folder.name} --folds {config['folds']} "
            f"--side {config['side']}{root}{flags}")


def finished_summary(folder: Path) -> dict[str, Any]:
    """``summarise`` of a cross-validation whose every fold has finished."""
    summary = summarise(folder)
    missing = sorted(set(range(summary["config"]["folds"])) - set(summary["folds_done"]))
    if missing:
        raise SystemExit(f"{folder}: folds {missing} have not finished (python -m training.detector_cv --name "
                         f"{folder.name} --root {folder.parent} resumes them)")
    return summary


def cv_tables(summary: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The cross-validation's operating point and out-of-fold tables, in the shape
    ``choose_operating_point`` gives them (the model card reads either), before any detector trained
    on every training image has counted its boxes per close-up there (``apply_operating_point``)."""
    t = summary["operating_point"]["threshold"]
    row = next(r for r in summary["curve"] if r["threshold"] == t)
    point = {"still_side": int(summary["config"]["side"]), "still_mirror": True, **row,
             "meets_precision": summary["meets_precision"]}
    return {**point, "threshold_large": t, "curve": summary["curve"], "sides": [{**point, "curve": summary["curve"]}],
            "size_thresholds": None, "target_precision": TARGET_PRECISION,
            "max_closeup_detections": MAX_CLOSEUP_DETECTIONS, "tune_images": summary["images"],
            "tune_faces": summary["faces"],
            "cv": {"folder": str(folder), "folds": summary["config"]["folds"],
                   "command": cv_command(folder, summary["config"]),
                   "fold_seconds": list(summary["fold_seconds"].values()),
                   "out_of_fold": {k: summary[k] for k in ("operating_point", "shipped_threshold")}}}


def apply_operating_point(out: Path, tuning: dict[str, Any], closeups: Sequence[Sample],
                          closeups_trained_on: bool) -> dict[str, Any]:
    """Set the contract of the detector in ``out`` (trained on every training image) to the
    operating point a cross-validation chose (``tuning``: ``cv_tables`` of its folder, or the tables
    an earlier fit of the same recipe recorded), count this detector's boxes per close-up there, and
    return the tables with that count.

    Why: the cross-validation costs four trainings; a new fit of the same recipe (and seed) takes
    the operating point it chose instead of repeating it.
    """
    chosen = {k: tuning[k] for k in ("threshold", "threshold_large", "still_side", "still_mirror")}
    at_point = TrainedDetector(out, threads=2, threshold=chosen["threshold"], threshold_large=chosen["threshold_large"],
                               still_side=chosen["still_side"], still_mirror=chosen["still_mirror"])
    count = closeup_detections(at_point, closeups)
    set_operating_point(out, chosen)
    sides = [{**s, "closeup_detections": count} if same_pass(s, chosen) else s for s in tuning["sides"]]
    return {**tuning, "closeup_detections": count, "sides": sides, "closeup_images": len(closeups),
            "closeups_trained_on": closeups_trained_on}


def format_summary(name: str, s: dict[str, Any]) -> str:
    lines = [f"{name}: {len(s['folds_done'])} of {s['config']['folds']} folds, "
             f"{s['images']} images, {s['faces']} faces"]
    for key in ("operating_point", "shipped_threshold"):
        r = s[key]
        p = r["pooled"]
        per_class = " / ".join(f"{p['recall_min32'][lab]:.3f}" if p['recall_min32'][lab] is not None else "-"
                               for lab in LABELS)
        by_size = " / ".join(f"{v:.3f}" if v is not None else "-" for v in p["recall_by_size_all"].values())
        lines.append(f"  {key.replace('_', ' ')} {r['threshold']:.2f}: recall {p['recall_all']:.3f} "
                     f"(< 16 / 16-31 / >= 32 px {by_size}; >= 32 px per class {per_class}), "
                     f"precision {p['precision']:.3f}, {p['detections_per_image']:.2f} boxes per image")
        lines.append("    faces found per fold (precision, each box matched to one face): " + ", ".join(
            f"{k}: {f['found']}/{f['faces']} (precision {f['precision']:.3f})" for k, f in r["per_fold"].items()))
        lines.append("    faces missed by cause (score / box / unseen): " + ", ".join(
            f"{b} " + " / ".join(str(n) for n in c.values()) for b, c in r["misses"]["by_size"].items()))
    return "\n".join(lines)


def compare(a: dict[str, Any], b: dict[str, Any], key: str = "shipped_threshold") -> str:
    """Faces found fold by fold, B minus A, at the same threshold (the folds hold the same images)."""
    common = [k for k in a[key]["per_fold"] if k in b[key]["per_fold"]]
    diffs = [b[key]["per_fold"][k]["found"] - a[key]["per_fold"][k]["found"] for k in common]
    return (f"  B - A faces found at the {key.replace('_', ' ')} per fold: {diffs} "
            f"(sum {sum(diffs):+d} on {len(common)} common folds)")


def _claim(out: Path, config: dict[str, Any]) -> None:
    """Write ``config`` into the cross-validation folder ``out``, refusing one that holds another
    (its finished folds belong to those settings; a resumed run must not mix them)."""
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if config_path.is_file() and json.loads(config_path.read_text()) != config:
        raise SystemExit(f"{out} holds a cross-validation with other settings ({config_path}); use another --name")
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def run(out: Path, folds: int, side: int, flags: list[str]) -> None:
    """Train and read every unfinished fold of ``out``."""
    from training.train_detector import detector_splits, parse_args
    from training.train_detector import main as train_detector

    _claim(out, {"folds": folds, "side": side, "flags": flags})
    for k in range(folds):
        fold_dir = out / f"fold{k}"
        if (fold_dir / OOF_FILE).is_file():
            continue
        argv = [*flags, "--folds", str(folds), "--fold", str(k),
                "--out", str(fold_dir / "model"), "--work", str(fold_dir / "work")]
        if (fold_dir / "work" / "checkpoints").is_dir():
            argv.append("--resume")
        log.info("fold %d of %d: python -m training.train_detector %s", k, folds, " ".join(argv))
        if train_detector(argv) != 0:
            raise SystemExit(f"fold {k} failed")
        args = parse_args(argv)
        held_out = detector_splits(Settings.load({"data_dir": args.data}).data_dir, args.limit_images, (k, folds))[1]
        (fold_dir / OOF_FILE).write_text(json.dumps(out_of_fold(fold_dir / "model", held_out, side)) + "\n")
        print(format_summary(out.name, summarise(out)), flush=True)


def reread(out: Path, source: Path, side: int) -> None:
    """Read each held-out fold of the finished cross-validation ``source`` again with its own fold
    detector, the thorough pass at ``side`` px, into the cross-validation folder ``out``."""
    from training.train_detector import detector_splits, parse_args

    config = json.loads((source / "config.json").read_text())
    finished_summary(source)
    _claim(out, {**config, "side": side, "models": str(source)})
    args = parse_args(config["flags"])
    data_dir = Settings.load({"data_dir": args.data}).data_dir
    for k in range(config["folds"]):
        fold_dir = out / f"fold{k}"
        if (fold_dir / OOF_FILE).is_file():
            continue
        held_out = detector_splits(data_dir, args.limit_images, (k, config["folds"]))[1]
        rows = out_of_fold(source / f"fold{k}" / "model", held_out, side)
        fold_dir.mkdir(exist_ok=True)
        (fold_dir / OOF_FILE).write_text(json.dumps(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--name", help="run name: results in --root/NAME")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--side", type=int, default=512, help="long side of the mirrored thorough pass read on each fold")
    p.add_argument("--models", type=Path, metavar="FOLDER",
                   help="train nothing: read the held-out folds again with this finished cross-validation's "
                        "fold detectors at --side (with --name; --folds and training flags come from FOLDER)")
    p.add_argument("--summarise", type=Path, nargs="+", metavar="FOLDER",
                   help="only print (and write cv.json of) finished folders; two or more are compared with the first")
    args = p.parse_args(ours)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if bool(args.name) == bool(args.summarise):
        p.error("give either --name (train) or --summarise FOLDER...")
    folders = args.summarise or [args.root / args.name]
    if args.models:
        if not args.name or flags:
            p.error("--models reads another cross-validation's fold detectors: give --name and no training flags")
        reread(folders[0], args.models, args.side)
    elif args.name:
        if args.folds < 2:
            p.error("--folds must be at least 2")
        run(folders[0], args.folds, args.side, flags)
    summaries = []
    for folder in folders:
        try:
            s = summarise(folder)
        except (OSError, ValueError) as exc:
            print(f"{folder}: {exc}", file=sys.stderr)
            return 1
        (folder / CV_FILE).write_text(json.dumps(s, indent=2) + "\n")
        print(format_summary(str(folder), s))
        if summaries:
            print(compare(summaries[0], s))
        summaries.append(s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
