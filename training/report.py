"""Plots and the model card, generated from the metrics a training run wrote.

The card's numbers are never typed by hand: they come from ``metrics.json`` (written by
``training.train``, with the cross-validation summaries of the shipped recipe and of the
candidates it was compared with) and ``baseline.json`` (``training.baseline``), so anyone can
regenerate them.

    python -m training.report model/                       # re-render plots and MODEL_CARD.md
    python -m training.report model/ --refresh-cv          # ... recomputing the CV summaries first
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from training.metrics import number_cell  # noqa: E402
from training.oof import may_mirror, served_variant  # noqa: E402
from training.recipe import Recipe  # noqa: E402
from webapp.vision.classifier import contract_members  # noqa: E402
from webapp.vision.labels import LABELS  # noqa: E402

SOURCES_NOTE = {
    "kaggle-facemask": "street and group photos, many small faces (median 22 px); VOC boxes",
    "maskedfacenet-maskon": "one large synthetic-mask face per image (FFHQ), correct vs incorrect",
    "chandrikadeb7-facemask": "face pictures with / without mask, whole image is the face",
    "maskedfacenet-imfd-extra": "synthetic nose-uncovered close-ups (MaskedFace-Net); reported, never used to choose",
}


def members(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The networks of a trained model as ``training.train`` records them (runs from before
    ensembles recorded their one network at the top level)."""
    if "members" in metrics:
        return metrics["members"]
    return [{"recipe": metrics["recipe"], "cv_dir": metrics["cv_dir"], "model_file": "mask_classifier.tflite",
             "history": metrics["history"], "epoch_curve": metrics["cv"]["epoch_curve"],
             "fold_seconds": metrics["cv"]["fold_seconds"],
             "tflite_vs_keras_max_abs_diff": metrics["tflite_vs_keras_max_abs_diff"]}]


def _network_name(recipe: dict[str, Any]) -> str:
    return f"α {recipe['alpha']:g}, {recipe['size']} px"


def write_plots(metrics: dict[str, Any], out: Path) -> None:
    """training_curves.png, confusion_matrix.png and reliability.png."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for member in members(metrics):
        name, history, curve = _network_name(member["recipe"]), member["history"], member["epoch_curve"]
        ax1.plot(range(1, len(history["loss"]) + 1), history["loss"], label=f"{name}: final fit, train loss")
        ax2.plot(range(1, len(curve) + 1), curve, label=f"{name}: held-out fold, kaggle macro-F1 (fold mean)")
        for ax in (ax1, ax2):
            ax.axvline(member["recipe"]["head_epochs"] + 0.5, color="grey", ls="--", lw=0.8)
    ax1.set_xlabel("epoch")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.legend(loc="lower right", fontsize=8)
    ax2.set_title("cross-validation; dashed: fine-tuning starts", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=90)
    plt.close(fig)

    sections = list(metrics["val"].items())
    fig, axes = plt.subplots(1, len(sections), figsize=(4.2 * len(sections), 4))
    for ax, (source, sec) in zip(list(axes) if len(sections) > 1 else [axes], sections):
        present = [i for i, lab in enumerate(LABELS) if sec["per_class"][lab]["support"]
                   or any(row[i] for row in sec["confusion"])]
        cm = [[sec["confusion"][r][c] for c in present] for r in present]
        names = [LABELS[i].replace("_", "\n") for i in present]
        ax.imshow(cm, cmap="Blues")
        for r, row in enumerate(cm):
            for c, v in enumerate(row):
                ax.text(c, r, str(v), ha="center", va="center",
                        color="white" if v > max(map(max, cm)) / 2 else "black")
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{source}\nacc {sec['accuracy']:.3f}, macro-F1 {sec['macro_f1']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=90)
    plt.close(fig)

    calibration = _served_variant(metrics)["calibration"]
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for key, name in (("reliability_raw", "out-of-fold, softmax as trained"),
                      ("reliability_calibrated", "out-of-fold, temperature (cross-fitted)")):
        rows = calibration[key]
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=name)
    rows = metrics["val_calibration"]["reliability"]
    ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="s", label="validation, served")
    ax.set_xlabel("confidence (probability of the decided class)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=90)
    plt.close(fig)


def _served_variant(metrics: dict[str, Any]) -> dict[str, Any]:
    """The cross-validation variant the server uses (with or without the mirrored crop)."""
    return metrics["cv"]["variants"][_variant_name(metrics)]


def _variant_name(metrics: dict[str, Any]) -> str:
    return "flip_tta" if metrics["serving"]["flip_average"] else "plain"


def _rule_name(metrics: dict[str, Any]) -> str:
    """The decision rule the server uses: argmax, or argmax after per-class offsets."""
    return "offsets" if any(metrics["serving"]["decision_offsets"]) else "argmax"


def _serving_name(variant: str, rule: str) -> str:
    crop = "mirrored crop" if variant == "flip_tta" else "single crop"
    return f"{crop}, {'class offsets' if rule == 'offsets' else 'argmax'}"


def _section_table(rows: list[tuple[str, dict]]) -> list[str]:
    lines = ["| subset | faces | accuracy | macro-F1 | " + " | ".join(f"{lab} P / R / F1" for lab in LABELS) + " |",
             "|---|---|---|---|" + "---|" * len(LABELS)]
    for name, sec in rows:
        if not sec.get("n"):
            continue
        cells = []
        for lab in LABELS:
            c = sec["per_class"][lab]
            cells.append("–" if not c["support"] else
                         f"{c['precision']:.2f} / {c['recall']:.2f} / {c['f1']:.2f} (n={c['support']})")
        lines.append(f"| {name} | {sec['n']} | {number_cell(sec['accuracy'])} | {number_cell(sec['macro_f1'])} | "
                     + " | ".join(cells) + " |")
    return lines


def _confusion_lines(sec: dict) -> list[str]:
    lines = ["| true \\ predicted | " + " | ".join(LABELS) + " |", "|---|" + "---|" * len(LABELS)]
    for label, row in zip(LABELS, sec["confusion"]):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return lines


KEY_NAMES = {
    "kaggle_macro_f1": "kaggle macro-F1", "kaggle_incorrect_recall": "kaggle mask_incorrect recall",
    "kaggle_incorrect_precision": "kaggle mask_incorrect precision",
    "kaggle_min32_macro_f1": "kaggle ≥ 32 px macro-F1", "maskon_accuracy": "maskon accuracy",
    "chandrika_accuracy": "chandrikadeb7 accuracy", "imfd_accuracy": "imfd-extra accuracy (synthetic)",
}
TARGETS = {"kaggle_macro_f1": 0.86, "kaggle_incorrect_recall": 0.70, "kaggle_incorrect_precision": 0.60,
           "kaggle_min32_macro_f1": 0.90, "maskon_accuracy": 0.97, "chandrika_accuracy": 0.98}


def _mean_std(cell: dict) -> str:
    if cell["mean"] is None:
        return "–"
    return f"{cell['mean']:.3f}" + (f" ± {cell['std']:.3f}" if cell["std"] is not None else "")


def _recipe_diff(config: dict, reference: dict) -> str:
    """A candidate described by what differs from the shipped (first network's) recipe; an
    ensemble by its members."""
    if "members" in config:
        return "ensemble (mean softmax) of " + " + ".join(
            f"`{run}` ({_network_name(recipe)})" for run, recipe in zip(config["members"], config["recipes"]))
    shipped = Recipe.normalised(reference["recipe"])
    changes = [f"{k} {v}" for k, v in Recipe.normalised(config["recipe"]).items() if shipped[k] != v]
    missing = sorted(set(reference["datasets"]) - set(config["datasets"]))
    changes += [f"without {d}" for d in missing]
    return ", ".join(changes) or "(same recipe)"


def _unsure_sentence(unsure: dict | None) -> str:
    if not unsure or unsure["share"] is None:
        return ""
    right = ("" if unsure["accuracy_unsure"] is None else
             f"; the model was right on {unsure['accuracy_unsure']:.0%} of those and on "
             f"{unsure['accuracy_sure']:.0%} of the rest")
    return (f" Out of fold (calibrated, cross-fitted), the rule holds back {unsure['share']:.1%} of "
            f"kaggle-facemask faces{right}.")


def _cv_lines(m: dict) -> list[str]:
    """Candidates (mean ± std over folds, the served variant and decision rule) and the shipped
    recipe's intervals, per-size table and calibration."""
    keys = list(KEY_NAMES)
    variant, rule = _variant_name(m), _rule_name(m)
    folds = len(m["cv"]["fold_seconds"])
    L = [f"## Model selection: {folds}-fold cross-validation on the development images", "",
         "Every candidate recipe was trained once per fold on the other four folds (folds by image "
         "group, near-duplicates together, stratified by the rarest label) and scored on the held-out "
         "fold with its exported TFLite file, so each development face has one out-of-fold "
         "prediction. The recipe, epoch count, temperature and decision rule were chosen on these; "
         f"the validation split below was not used for any choice. Mean ± std over the {folds} folds "
         f"({'class offsets chosen on the other four folds' if rule == 'offsets' else 'argmax decisions'}, "
         f"{'mirrored crop averaged in' if variant == 'flip_tta' else 'single crop'}: as still images are "
         "served):", "",
         "| candidate | " + " | ".join(KEY_NAMES[k] for k in keys) + " |",
         "|---|" + "---|" * len(keys),
         "| target | " + " | ".join(f"≥ {TARGETS[k]:.2f}" if k in TARGETS else "–" for k in keys) + " |"]
    reference = {"recipe": m["recipe"], "datasets": m["datasets"]}
    shipped_name = "**shipped**" + (f": {_recipe_diff(m['cv']['config'], reference)}"
                                    if len(members(m)) > 1 else "")
    rows = [(f"{shipped_name} (`{m['cv_dir']}`)", m["cv"])] + [
        (f"`{path}`: {_recipe_diff(cv['config'], reference)}", cv)
        for path, cv in m["compare"].items() if path != m["cv_dir"]]
    for name, cv in rows:
        cells = cv["variants"][variant][rule]["mean_std"]
        L.append(f"| {name} | " + " | ".join(_mean_std(cells[k]) for k in keys) + " |")
    served_by_path = {path: served_variant(cv["variants"], may_mirror(cv["config"]))
                      for path, cv in m["compare"].items() if path != m["cv_dir"]}
    own = [(path, served, m["compare"][path]) for path, served in served_by_path.items() if served != (variant, rule)]
    if own:
        L += ["", "Candidates whose own folds would serve still images another way (`training.train` takes "
              "the mirrored crop and the class offsets per model where they raise its out-of-fold macro-F1), "
              "read that way (" + ", ".join(KEY_NAMES[k] for k in keys[:-1]) + "): " + "; ".join(
                  f"`{path}` {_serving_name(*served)}: " + " / ".join(
                      _mean_std(cv["variants"][served[0]][served[1]]["mean_std"][k]) for k in keys[:-1])
                  for path, served, cv in own) + "."]
    shipped = m["cv"]["variants"]
    L += ["", "Shipped recipe, all out-of-fold faces pooled, bootstrap 95 % intervals (1000 resamples of "
          "whole images): " + "; ".join(
              f"{KEY_NAMES[k]} [{lo:.3f}, {hi:.3f}]" for k, (lo, hi) in
              shipped[variant][rule]["bootstrap95"].items() if lo is not None) + ".", "",
          "Serving options, out-of-fold (mean over folds of kaggle macro-F1 / mask_incorrect recall / precision): "
          + "; ".join(f"{name}: " + " / ".join(_mean_std(shipped[v][rule]["mean_std"][k]) for k in keys[:3])
                      for name, v, rule in (("single crop, argmax", "plain", "argmax"),
                                            ("mirrored crop averaged, argmax", "flip_tta", "argmax"),
                                            ("single crop, class offsets", "plain", "offsets"),
                                            ("mirrored, class offsets", "flip_tta", "offsets")))
          + ". Class offsets are chosen on four folds and scored on the fifth. Shipped: "
          f"mirrored crop {'on' if m['serving']['flip_average'] else 'off'}, decision offsets "
          f"{[round(v, 3) for v in m['serving']['decision_offsets']]} (log-probability added per class, "
          f"{', '.join(LABELS)})." + _live_sentence(m) + _ranking_sentence(shipped[variant][rule]), "",
          "### Out-of-fold results by face size (kaggle-facemask development images, shipped recipe)", ""]
    L += _section_table([(f"faces {b}", sec) for b, sec in shipped[variant][rule]["by_size"].items()])
    base = next((cv for path, cv in m["compare"].items() if "datasets" in cv["config"]
                 and len(cv["config"]["datasets"]) < len(m["datasets"])), None)
    if base is not None:
        L += ["", "The same table for the previous recipe (`base`: no imfd-extra, no occlusion, "
              "no label smoothing):", ""]
        L += _section_table([(f"faces {b}", sec) for b, sec in base["variants"][variant][rule]["by_size"].items()])
    cal = shipped[variant]["calibration"]
    L += ["", "Macro-F1 per size bucket averages only the classes present: small faces are almost never "
          "`mask_incorrect`, so their macro-F1 is over two easy classes, while ≥ 32 px holds most of the "
          "incorrectly worn masks. Compare per-class F1, not macro-F1, across sizes.", "",
          "### Calibration", "",
          f"`score` is softmax(log p / T) with T = {cal['temperature']:.3f}, fitted on all out-of-fold "
          f"predictions (negative log-likelihood). Expected calibration error (15 bins), out-of-fold: "
          f"{cal['ece_raw']:.3f} as trained, {cal['ece_calibrated_crossfit']:.3f} calibrated (T fitted on "
          f"four folds, measured on the fifth); validation split, served model: "
          f"{m['val_calibration']['ece']:.3f}.", "",
          f"A face whose calibrated score is below {m['serving']['unsure_below']} is **unsure**: the server "
          "sends it with `unsure: true`, the camera page draws it grey, and it does not vote for its "
          "track's label, count as a person, move compliance or raise an alert until a confident frame "
          "of the same track decides it." + _unsure_sentence((cal.get("unsure") or {}).get(rule)), "",
          "![reliability](reliability.png)", ""]
    return L


def _ranking_sentence(report: dict) -> str:
    """The classifier's share of the end-to-end AP, where the CV summary has it."""
    ranking = report.get("ranking_ap")
    if not ranking:
        return ""
    return (" Ranking on true face boxes (what the end-to-end AP asks of the classifier: the faces decided "
            "as a class, ordered by calibrated score; out-of-fold average precision per class on "
            "kaggle-facemask, mean ± std over folds, all faces / ≥ 32 px): "
            + "; ".join(f"`{name}` {_mean_std(ranking['all'][name])} / {_mean_std(ranking['min32'][name])}"
                        for name in LABELS) + ".")


def _live_sentence(m: dict) -> str:
    serving, live = m["serving"], m["serving"].get("live")
    if not live or live == {k: serving[k] for k in live}:
        return ""
    variants = m["cv"]["variants"]
    f1 = {v: _mean_std(variants[v]["offsets"]["mean_std"]["kaggle_macro_f1"]) for v in ("plain", "flip_tta")}
    how = f" (`{m['serving_command']}`)" if m.get("serving_command") else ""
    return (f" Live video (camera frames) reads a single crop, for half the classifier's cost per frame: "
            f"T = {live['temperature']:.3f}, decision offsets {[round(v, 3) for v in live['decision_offsets']]}"
            f"{how}; per face, out-of-fold kaggle macro-F1 {f1['plain']} single crop against {f1['flip_tta']} "
            "mirrored (the difference is well inside the spread over folds), and the tracker then votes "
            "over each person's frames.")


def write_model_card(out: Path) -> None:
    m = json.loads((out / "metrics.json").read_text())
    contract = json.loads((out / "labels.json").read_text())
    nets, folds = members(m), len(m["cv"]["fold_seconds"])
    L: list[str] = [
        "# Model card: maskwatch mask classifier",
        "",
        "_Generated by `python -m training.report model/` from `metrics.json` (written by "
        "`python -m training.train`, which runs the cross-validation too) and `baseline.json`; "
        "do not edit by hand._",
        "",
        "## What it does",
        f"Classifies one face crop as {', '.join(f'`{lab}`' for lab in LABELS)}. The server crops each "
        "detected face with `webapp/vision/crop.py` (the same function training used) at each network's "
        "input size and runs the fp32 TFLite file(s) with LiteRT"
        + (", averaging the networks' softmax outputs (an ensemble) before the decisions below." if len(nets) > 1
           else ".") + " Each `.keras` file is the same network for Keras (no optimizer state).",
        "",
        f"- Architecture: {contract['architecture']}; networks: " + "; ".join(
            f"`{entry['model_file']}` α = {entry['alpha']:g}, input {entry['input_size']}×{entry['input_size']} RGB"
            for entry in contract_members(contract)) + ".",
        f"- Preprocessing contract (`labels.json`): crop margin {contract['crop_margin']} — "
        f"{contract['crop']}; scaling {contract['scaling']}.",
        f"- Decisions (`labels.json`, chosen on out-of-fold predictions): temperature "
        f"{contract.get('temperature', 1.0):.3f}, mirrored crop averaged in: "
        f"{'yes' if contract.get('flip_average') else 'no'}, class offsets {contract.get('decision_offsets')}, "
        f"unsure below {contract.get('unsure_below')}.",
        "- Backbone weights: Keras' ImageNet MobileNetV2 (the 224 px file of each width, applied at the "
        "network's input size).",
        "",
        "## How it was made",
        f"- Command: `{m['command']}` (datasets from `MASKWATCH_DATA`, weights from `MASKWATCH_WEIGHTS`); "
        f"it cross-validates each network ({folds} folds, reusing finished folds in "
        + ", ".join(f"`{net['cv_dir']}`" for net in nets)
        + (f"; the ensemble's out-of-fold summary in `{m['cv_dir']}`" if len(nets) > 1 else "")
        + ") and then trains the shipped network(s) on all development images.",
    ]
    for net in nets:
        r = net["recipe"]
        L.append(
            f"- Recipe{f' of {_network_name(r)}' if len(nets) > 1 else ''}: seed {r['seed']}; balance "
            f"`{r['balance']}`; label smoothing {r['label_smoothing']}; hand-over-mouth occlusion on "
            f"{r['occlusion']:.0%} of unmasked training crops; "
            + (f"a real mask pasted below the nose of {r['pulled_mask']:.0%} of unmasked kaggle-facemask "
               "training faces, relabelled `mask_incorrect`; " if r.get("pulled_mask") else "")
            + f"head {r['head_epochs']} epochs at lr "
            f"{r['head_lr']}, then the top {r['finetune_layers']} backbone layers (BatchNorm frozen) "
            f"{r['finetune_epochs']} epochs at lr {r['finetune_lr']}"
            f"{' decaying to 0 (cosine)' if r.get('finetune_schedule') == 'cosine' else ''}, "
            f"batch {r['batch_size']}; a fixed epoch count (the held-out curve in the plot below), no early stopping.")
    fold_minutes = sum(sum(net["fold_seconds"]) for net in nets) / 60
    L += [
        "- Augmentation: box jitter (centre ±8 %, size ×exp(N(0, 0.12))), flips, rotation ±12°, "
        "down-then-up scaling to 12–64 px, blur, brightness/contrast, colour cast, JPEG re-encoding.",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}. On the 2-core CPU the "
        f"{folds} cross-validation folds of {len(nets)} network(s) took {fold_minutes:.0f} min "
        f"(trained once, reused when the folder holds them) and the command {m['train_seconds'] / 60:.0f} min "
        "more (the final fits, export and report; a final fit already in its CV folder is reused).",
        "- TFLite vs Keras on 64 validation crops, max probability difference: " + ", ".join(
            f"{_network_name(net['recipe'])} {net['tflite_vs_keras_max_abs_diff']:.1e}" for net in nets) + ".",
        "",
        "## Data",
        "Split by source image (all faces of one image, near-duplicate pictures and the variants of one "
        "MaskedFace-Net person stay on one side), stratified by the rarest label in the image: 25 % "
        "validation (seed 1234, the split `training.evaluate --split val` uses), the rest development. "
        "Faces per split:",
        "",
        "| source | split | " + " | ".join(LABELS) + " | note |",
        "|---|---|" + "---|" * len(LABELS) + "---|",
    ]
    for side in ("dev", "val"):
        for source, counts in sorted(m["split"][side].items()):
            L.append(f"| {source} | {side} | " + " | ".join(str(counts.get(lab, 0)) for lab in LABELS)
                     + f" | {SOURCES_NOTE.get(source, '')} |")
    L += [""] + _cv_lines(m)
    L += ["## Validation results (shipped TFLite file with its decisions, true face boxes)", "",
          "The validation split was held out of the cross-validation, the final fit and every choice above.", ""]
    L += _section_table([(s, sec) for s, sec in m["val"].items()]
                        + [(f"kaggle-facemask faces {b}", sec) for b, sec in m["kaggle_by_size"].items()])
    L += ["", "Confusion matrix, kaggle-facemask validation (all sizes):", ""]
    L += _confusion_lines(m["val"].get("kaggle-facemask", m["all"]))
    L += ["", "![confusion matrices](confusion_matrix.png)", "", "![training curves](training_curves.png)", ""]

    baseline_path = out / "baseline.json"
    if baseline_path.exists():
        b = json.loads(baseline_path.read_text())
        L += ["## Baseline (measured with our code)", "",
              f"`{b['command']}`: {b['description']}", "",
              "| model | evaluation | macro-F1 | with_mask F1 | mask_incorrect F1 (recall) | without_mask F1 | "
              "accuracy ≥ 32 px | macro-F1 ≥ 32 px |",
              "|---|---|---|---|---|---|---|---|"]
        for row in b["rows"]:
            L.append(f"| {row['model']} | {row['evaluation']} | {row['macro_f1']} | {row['f1_with_mask']} | "
                     f"{row['f1_mask_incorrect']} ({row['recall_mask_incorrect']}) | {row['f1_without_mask']} | "
                     f"{row['acc_min32']} | {row['f1_min32']} |")
        L.append("")

    L += ["## Known failure cases (out-of-fold, described in words)", ""]
    L += ["The most confident wrong out-of-fold decisions of the shipped recipe (calibrated probability "
          "of the wrong class; image names, no pictures):", ""]
    L += [f"- {e['source']} `{e['image']}`: a {e['short_side']:.0f} px `{e['true']}` face called "
          f"`{e['predicted']}` at {e['probability']:.2f}" for e in _served_variant(m)[_rule_name(m)]["worst_errors"]]
    L += ["",
          "## Known limitations",
          "- `mask_incorrect` is rare in real photos (about 3 % of kaggle-facemask faces); its numbers "
          "rest on few faces (see the intervals above).",
          "- MaskedFace-Net masks (maskon, imfd-extra) are synthetic; chandrikadeb7 pictures include web "
          "images and augmented copies, so scores there are optimistic for a real entrance camera.",
          "- Faces under ~16 px carry little information; expect more errors for people far from the camera.",
          "- The hand-over-mouth augmentation is synthetic (skin-coloured fingers); scarves and beards "
          "were not simulated.",
          "- Calibration holds for faces like the training data. A head turned away or a profile the "
          "model never saw can still get a confident wrong score; the unsure rule catches only what the "
          "model itself doubts.",
          ""]
    from training.detector_report import METRICS_FILE, detector_card_lines

    if (out / METRICS_FILE).exists():
        L += detector_card_lines(out)
    (out / "MODEL_CARD.md").write_text("\n".join(L))


def refresh_cv(model_dir: Path, add: list[Path] | None = None) -> None:
    """Recompute the cross-validation summaries in ``metrics.json`` from the saved out-of-fold
    predictions (``runs/cv/<name>/fold*.npz``), e.g. after the summary gained a table, or after
    another candidate (``add``) finished its cross-validation. Summaries whose folder is not
    here (``runs/`` is local: another checkout, or a candidate kept from a replaced model) stay
    as recorded."""
    from training.ensemble_cv import summarise_folder as summary
    from training.oof import candidate_summary

    path = model_dir / "metrics.json"
    m = json.loads(path.read_text())

    def here(name: str) -> bool:
        return (Path(name) / "config.json").is_file()
    if here(m["cv_dir"]):
        m["cv"] = summary(Path(m["cv_dir"]))
    compare = m.get("compare", {})
    names = list(compare) + [str(p) for p in add or [] if str(p) not in compare]
    m["compare"] = {name: candidate_summary(summary(Path(name))) if here(name) or name not in compare
                    else compare[name] for name in names}
    path.write_text(json.dumps(m, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--refresh-cv", action="store_true",
                   help="recompute the cross-validation summaries from the saved out-of-fold predictions")
    p.add_argument("--compare", type=Path, nargs="*", default=[],
                   help="with --refresh-cv: also list these finished CV folders (runs/cv/NAME)")
    args = p.parse_args(argv)
    if args.refresh_cv:
        refresh_cv(args.model_dir, args.compare)
    write_plots(json.loads((args.model_dir / "metrics.json").read_text()), args.model_dir)
    write_model_card(args.model_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
