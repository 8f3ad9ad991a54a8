"""Cross-validation bookkeeping on synthetic predictions: folds, calibration, decisions, intervals."""

import json

import numpy as np
import pytest

from training.datasets import Face, Sample, assign_folds
from training.metrics import classifier_section
from training.oof import (
    OutOfFold,
    acceptance_numbers,
    candidate_summary,
    choose_offsets,
    cross_fit,
    decide,
    expected_calibration_error,
    fit_temperature,
    ranking_ap,
    summarise,
    with_temperature,
)
from webapp.vision.labels import LABELS


def sample(source, group, *labels):
    return Sample(source, None, group, 100, 100, tuple(Face((0, 0, 10, 10), lab) for lab in labels))


def test_folds_keep_groups_together_and_spread_the_rare_class():
    samples = [sample("kaggle-facemask", f"g{i // 2}", "mask_incorrect" if i % 20 < 2 else "with_mask")
               for i in range(200)]
    folds = assign_folds(samples, 5, seed=1)
    by_group = {}
    for s, k in zip(samples, folds):
        by_group.setdefault(s.group, set()).add(int(k))
    assert all(len(ks) == 1 for ks in by_group.values())
    rare = [int(k) for s, k in zip(samples, folds) if s.faces[0].label == "mask_incorrect"]
    assert sorted(np.bincount(rare, minlength=5) // 2) == [2, 2, 2, 2, 2]  # 10 rare groups, 2 per fold
    assert np.array_equal(assign_folds(samples, 5, seed=1), folds)
    with pytest.raises(ValueError):
        assign_folds(samples, 1)


def synthetic(n=3000, temperature=2.5, seed=0):
    """Labels drawn from calibrated probabilities, then sharpened by 1/temperature: overconfident."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, 3))
    calibrated = with_temperature(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 1.0)
    labels = np.array([rng.choice(3, p=p) for p in calibrated])
    overconfident = with_temperature(calibrated, 1 / temperature)
    return calibrated, overconfident, labels


def test_temperature_recovers_the_sharpening_and_lowers_the_calibration_error():
    calibrated, overconfident, labels = synthetic()
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(2.5, rel=0.15)
    assert expected_calibration_error(calibrated, labels) < 0.04
    assert expected_calibration_error(overconfident, labels) > 0.1
    assert expected_calibration_error(with_temperature(overconfident, t), labels) < 0.04
    assert np.array_equal(decide(with_temperature(overconfident, t)), decide(overconfident))  # order kept


def oof_of(probs, labels, folds=5, source="kaggle-facemask"):
    n = len(labels)
    return OutOfFold(probs, probs, labels, np.full(n, source), np.array([f"g{i}" for i in range(n)]),
                     np.full(n, 40.0), np.arange(n) % folds, [{"fold_kaggle_macro_f1": [0.5, 0.6]}] * folds,
                     [1.0] * folds)


def test_cross_fitting_never_uses_the_fold_it_scores():
    _, probs, labels = synthetic(500)
    oof = oof_of(probs, labels)
    seen = []

    def choose(p, y, s):
        seen.append(len(p))
        return len(p)

    out = cross_fit(oof, probs, choose, lambda p, n: np.full(len(p), n))
    assert seen == [400] * 5 and set(out) == {400}


def test_offsets_favour_a_class_the_model_under_calls():
    rng = np.random.default_rng(1)
    labels = rng.choice(3, 2000, p=[0.7, 0.1, 0.2])
    probs = np.full((2000, 3), 0.1)
    probs[np.arange(2000), labels] = 0.6
    probs[labels == 1, 0] = 0.65  # the rare class always loses narrowly to with_mask
    probs /= probs.sum(1, keepdims=True)
    offsets = choose_offsets(probs, labels, np.full(2000, "kaggle-facemask"))
    assert offsets[1] > 0 and (decide(probs, offsets) == labels).mean() > (decide(probs) == labels).mean()


def test_summary_has_intervals_that_contain_the_pooled_value():
    _, probs, labels = synthetic(600)
    summary = summarise(oof_of(probs, labels), {"recipe": {}})
    plain = summary["variants"]["plain"]["argmax"]
    lo, hi = plain["bootstrap95"]["kaggle_macro_f1"]
    mean = plain["mean_std"]["kaggle_macro_f1"]["mean"]
    assert lo < mean < hi
    assert summary["epoch_curve"] == [0.5, 0.6]
    assert len(plain["worst_errors"]) == 10


def test_a_compared_candidate_keeps_what_the_card_shows_and_drops_the_per_fold_detail():
    _, probs, labels = synthetic(600)
    summary = summarise(oof_of(probs, labels), {"recipe": {"size": 224}})
    kept = candidate_summary(summary)
    assert kept["config"] == {"recipe": {"size": 224}}
    for variant in ("plain", "flip_tta"):
        for rule in ("argmax", "offsets"):
            full = summary["variants"][variant][rule]
            assert kept["variants"][variant][rule] == {k: full[k] for k in ("mean_std", "by_size", "ranking_ap")}
    assert len(json.dumps(kept)) < len(json.dumps(summary)) / 3


def test_fast_numbers_agree_with_the_reported_sections():
    rng = np.random.default_rng(2)
    y, pred = rng.choice(3, 400, p=[0.7, 0.1, 0.2]), rng.choice(3, 400)
    sources = np.where(np.arange(400) < 300, "kaggle-facemask", "maskedfacenet-maskon")
    numbers = acceptance_numbers(y, pred, sources, np.full(400, 40.0))
    names = np.array(LABELS)
    kaggle = classifier_section(names[y[:300]], names[pred[:300]])
    assert numbers["kaggle_macro_f1"] == pytest.approx(kaggle["macro_f1"])
    assert numbers["kaggle_incorrect_recall"] == pytest.approx(kaggle["per_class"]["mask_incorrect"]["recall"])
    assert numbers["kaggle_incorrect_precision"] == pytest.approx(kaggle["per_class"]["mask_incorrect"]["precision"])
    maskon = classifier_section(names[y[300:]], names[pred[300:]])
    assert numbers["maskon_accuracy"] == pytest.approx(maskon["accuracy"])
    assert numbers["chandrika_accuracy"] is None


@pytest.mark.parametrize("p_right, p_wrong, expected", [
    (0.9, 0.8, 0.5),   # the right face ranked first: precision 1 at the one hit of 2 true faces
    (0.7, 0.8, 0.25),  # the wrong face ranked first: precision 1/2 at the hit
])
def test_ranking_ap_ranks_only_the_faces_decided_as_the_class(p_right, p_wrong, expected):
    # Faces 0..3 are true with / incorrect / incorrect / without; face 2 was decided as with_mask,
    # so it cannot be found as mask_incorrect at any score (recall counts it, as served AP does).
    y = np.array([0, 1, 1, 2])
    pred = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.1, p_right, 0.9 - p_right],
                      [0.6, 0.39, 0.01], [0.1, p_wrong, 0.9 - p_wrong]])
    ap = ranking_ap(probs, y, pred, np.ones(4, bool))
    assert ap["mask_incorrect"] == pytest.approx(expected)
    assert ap["with_mask"] == 1.0  # two faces decided with_mask; its one true face ranked first
    assert ap["without_mask"] == 0.0  # its one face was decided as another class
    assert ranking_ap(probs, y, pred, np.array([True, False, False, False]))["without_mask"] is None


def write_run(folder, oof, folds=5):
    """A finished crossval folder (fold files as training.crossval writes them) from synthetic predictions."""
    folder.mkdir()
    for k in range(folds):
        at = oof.fold == k
        np.savez_compressed(folder / f"fold{k}.npz", probs=oof.probs[at], probs_flip=oof.probs_flip[at],
                            labels=oof.labels[at], sources=oof.sources[at], groups=oof.groups[at],
                            short_sides=oof.short_sides[at], fold=oof.fold[at],
                            history=json.dumps(oof.histories[k]), seconds=oof.seconds[k])
    (folder / "config.json").write_text(json.dumps({"recipe": {}, "folds": folds, "datasets": ["kaggle-facemask"]}))


def test_an_ensemble_of_finished_runs_averages_their_probabilities(tmp_path, capsys):
    from training.ensemble_cv import ensemble, main, summarise_folder
    from training.oof import may_mirror, served_variant

    _, sharp, labels = synthetic(600, seed=1)
    _, blurred, _ = synthetic(600, temperature=0.5, seed=1)  # the same faces seen by another model
    write_run(tmp_path / "a", oof_of(sharp, labels))
    write_run(tmp_path / "b", oof_of(blurred, labels))
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ens")]) == 0
    summary = json.loads((tmp_path / "ens" / "cv.json").read_text())
    assert summary["config"]["members"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert summary["faces"] == 600 and "<- served" in capsys.readouterr().out
    both = ensemble([oof_of(sharp, labels), oof_of(blurred, labels)])
    assert np.allclose(both.probs, (sharp + blurred) / 2) and np.array_equal(both.labels, labels)
    # The folder names its members, so its summary can be recomputed from their folds.
    assert summarise_folder(tmp_path / "ens")["variants"] == summary["variants"]
    # An ensemble serves a single crop even where its mirrored pair would score higher (cost).
    summary["variants"]["flip_tta"]["argmax"]["mean_std"]["kaggle_macro_f1"]["mean"] = 1.0
    assert served_variant(summary["variants"], may_mirror(summary["config"]))[0] == "plain"
    assert served_variant(summary["variants"])[0] == "flip_tta"

    write_run(tmp_path / "other", oof_of(sharp, labels[::-1].copy()))  # not the same faces
    with pytest.raises(SystemExit, match="not folds of the same faces"):
        main([str(tmp_path / "a"), str(tmp_path / "other"), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="no config.json"):
        main([str(tmp_path / "a"), str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
