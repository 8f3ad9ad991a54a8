"""Cross-validation of an ensemble of finished candidate recipes, from their out-of-fold files.

Two models that see a face differently (e.g. a narrow backbone at 224 px and a wide one at a
smaller input) may together decide better than either; whether they do is a cross-validation
question like any other, and the folds already hold each model's served probabilities for the
same faces, so no training is needed: the ensemble's probability per face is the mean of its
members' raw probabilities, and the temperature and class offsets are then chosen on the other
folds by the same code as for a single recipe (``training.oof.summarise``).

    python -m training.ensemble_cv runs/cv/s224 runs/cv/a100-s160 --out runs/cv/ens-s224-a100s160

Writes ``OUT/cv.json`` and prints the variants' mean ± std over folds. An ensemble reads a single
crop of each face: a mirrored pair would cost twice the ensemble's time per face, over the 3 ms
budget (``bench/classifier.py``). ``training.train`` trains and serves an ensemble
(``--ensemble``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from training.oof import KEYS, OutOfFold, candidate_summary, load_folds, may_mirror, served_variant, summarise


def ensemble(members: list[OutOfFold]) -> OutOfFold:
    """The members' mean probabilities per face; the members must be folds of the same faces."""
    first = members[0]
    for other in members[1:]:
        for field in ("labels", "sources", "groups", "fold"):
            if not np.array_equal(getattr(first, field), getattr(other, field)):
                raise ValueError(f"the runs are not folds of the same faces ({field} differ): "
                                 "ensembles need runs with the same --folds, --datasets and seed")
    return OutOfFold(np.mean([m.probs for m in members], 0), np.mean([m.probs_flip for m in members], 0),
                     first.labels, first.sources, first.groups, first.short_sides, first.fold,
                     first.histories, [float(np.sum(s)) for s in zip(*(m.seconds for m in members))])


def crossval_ensemble(runs: Sequence[Path], out: Path, command: str) -> dict:
    """The ensemble of finished cross-validation folders ``runs``: its summary, also written to
    ``out/cv.json`` with ``out/config.json`` naming the members (``summarise_folder`` reads it)."""
    if len(runs) < 2:
        raise ValueError("an ensemble needs at least two runs")
    configs = []
    for run in runs:
        if not (Path(run) / "config.json").is_file():
            raise ValueError(f"not a finished cross-validation folder: {run} (no config.json)")
        configs.append(json.loads((Path(run) / "config.json").read_text()))
    folds = {c["folds"] for c in configs}
    if len(folds) != 1:
        raise ValueError(f"the runs have different fold counts: {sorted(folds)}")
    config = {"members": [str(r) for r in runs], "recipes": [c["recipe"] for c in configs],
              "folds": configs[0]["folds"], "datasets": configs[0]["datasets"], "command": command}
    summary = summarise(load_ensemble(config), config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "cv.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_ensemble(config: dict) -> OutOfFold:
    """The out-of-fold predictions of the ensemble an ensemble ``config.json`` names."""
    return ensemble([load_folds(Path(run), int(config["folds"])) for run in config["members"]])


def summarise_folder(folder: Path) -> dict:
    """The summary of a finished cross-validation folder, a recipe's or an ensemble's."""
    config = json.loads((folder / "config.json").read_text())
    oof = load_ensemble(config) if "members" in config else load_folds(folder, int(config["folds"]))
    return summarise(oof, config)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="finished training.crossval folders (runs/cv/NAME)")
    p.add_argument("--out", type=Path, required=True, help="folder for the ensemble's cv.json")
    args = p.parse_args(argv)
    command = "python -m training.ensemble_cv " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        summary = crossval_ensemble(args.runs, args.out, command)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(str(exc)) from exc

    compact = candidate_summary(summary)["variants"]
    served = served_variant(summary["variants"], may_mirror(summary["config"]))
    for variant, rules in compact.items():
        for rule, report in rules.items():
            mark = "  <- served (still images)" if (variant, rule) == served else ""
            cells = ", ".join(f"{k} {report['mean_std'][k]['mean']:.3f} ± {report['mean_std'][k]['std']:.3f}"
                              for k in KEYS if report["mean_std"][k]["mean"] is not None)
            ap = report["ranking_ap"]["all"]["mask_incorrect"]["mean"]
            print(f"{variant:8s} {rule:7s} {cells}, mask_incorrect ranking AP {ap:.3f}{mark}")
    print(f"wrote {args.out / 'cv.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
