"""A tiny real training run and the evaluation CLI (real data, real Keras, real TFLite export)."""

import json
import shutil

import numpy as np
import pytest

from training import evaluate, report, train
from webapp.vision.classifier import MaskClassifier
from webapp.vision.labels import LABELS


@pytest.mark.slow
def test_tiny_training_run_produces_loadable_artifacts(data_dir, weights_dir, tmp_path):
    """The default command's path at toy size: an ensemble of two networks, each cross-validated,
    the ensemble's decisions from their out-of-fold predictions, both exported and served."""
    out = tmp_path / "model"
    cv, cv2 = tmp_path / "cv", tmp_path / "cv2"
    args = ["--data", str(data_dir), "--out", str(out), "--cv", str(cv), str(cv2), "--folds", "2",
            "--limit-images", "6", "--head-epochs", "1", "--finetune-epochs", "1", "--batch-size", "16",
            "--size", "96", "--ensemble", "size=64,alpha=1.0"]
    assert train.main(args) == 0
    for name in ("mask_classifier.keras", "mask_classifier.tflite", "mask_classifier_2.keras",
                 "mask_classifier_2.tflite", "labels.json", "metrics.json",
                 "MODEL_CARD.md", "training_curves.png", "confusion_matrix.png", "reliability.png"):
        assert (out / name).stat().st_size > 0, name
    for folder in (cv, cv2):
        assert {p.name for p in folder.iterdir()} >= {"fold0.npz", "fold1.npz", "cv.json", "config.json",
                                                       "final.keras", "final_history.json"}
    contract = json.loads((out / "labels.json").read_text())
    assert contract["labels"] == list(LABELS)
    assert [(m["model_file"], m["input_size"], m["alpha"]) for m in contract["members"]] == [
        ("mask_classifier.tflite", 96, 0.35), ("mask_classifier_2.tflite", 64, 1.0)]
    assert contract["temperature"] > 0 and len(contract["decision_offsets"]) == 3
    assert contract["flip_average"] is False  # an ensemble never reads the mirrored pair (cost)
    assert 0 < contract["unsure_below"] < 1
    served = MaskClassifier(out)
    assert served.input_sizes == (96, 64)
    inputs = {s: np.zeros((3, s, s, 3), np.float32) for s in (96, 64)}
    assert len(served.classify(inputs)) == 3
    assert np.allclose(served.raw_proba(inputs), (served.members[0].raw_proba(inputs[96])
                                                  + served.members[1].raw_proba(inputs[64])) / 2)
    import keras
    for name in ("mask_classifier.keras", "mask_classifier_2.keras"):
        model = keras.saving.load_model(out / name, compile=False)
        assert model.output_shape == (None, 3)
        assert not keras_file_has_optimizer_state(out / name)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["tflite_vs_keras_max_abs_diff"] <= 1e-4 for m in metrics["members"]] == [True, True]
    ensemble_dir = metrics["cv_dir"]
    assert ensemble_dir.startswith(str(tmp_path)) and set(metrics["compare"]) == {str(cv), str(cv2)}
    card = (out / "MODEL_CARD.md").read_text()
    assert "python -m training.train" in card and "2-fold cross-validation" in card
    # A model trained into this folder later lists this one (and each of its networks) among its candidates.
    replaced = train.replaced_candidates(out)
    assert set(replaced) == {str(cv), str(cv2), ensemble_dir}
    assert replaced[str(cv)]["config"]["recipe"]["size"] == 96
    assert [r["size"] for r in replaced[ensemble_dir]["config"]["recipes"]] == [96, 64]
    assert set(replaced[str(cv)]["variants"]["plain"]) == {"argmax", "offsets"}
    assert train.replaced_candidates(tmp_path / "nothing-here") == {}
    # Refreshing the CV summaries recomputes what has its folder here and keeps what has not.
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["compare"] = {"runs/cv/gone": replaced[str(cv)], str(cv2): metrics["compare"][str(cv2)]}
    (out / "metrics.json").write_text(json.dumps(metrics))
    report.refresh_cv(out, [cv])
    refreshed = json.loads((out / "metrics.json").read_text())
    assert list(refreshed["compare"]) == ["runs/cv/gone", str(cv2), str(cv)]
    assert refreshed["compare"]["runs/cv/gone"] == replaced[str(cv)]
    assert refreshed["cv"]["variants"] == metrics["cv"]["variants"]
    # A second run reuses the finished folds and final fits; another recipe in the same folder is refused.
    before = [(f / "fold0.npz").stat().st_mtime_ns for f in (cv, cv2)] + [(cv / "final.keras").stat().st_mtime_ns]
    assert train.main(args) == 0
    assert [(f / "fold0.npz").stat().st_mtime_ns for f in (cv, cv2)] + [(cv / "final.keras").stat().st_mtime_ns] \
        == before
    with pytest.raises(SystemExit, match="another recipe"):
        train.main(args + ["--label-smoothing", "0.05"])
    # One network (``--ensemble`` alone) replacing the ensemble leaves no stray second file.
    single = [a for a in args if a not in (str(cv2), "size=64,alpha=1.0")]
    assert train.main(single) == 0
    assert not (out / "mask_classifier_2.tflite").exists()
    assert [m["input_size"] for m in json.loads((out / "labels.json").read_text())["members"]] == [96]


def keras_file_has_optimizer_state(path) -> bool:
    import io
    import zipfile

    import h5py
    with h5py.File(io.BytesIO(zipfile.ZipFile(path).read("model.weights.h5"))) as f:
        sizes = []
        if "optimizer" in f:
            f["optimizer"].visititems(lambda _n, o: sizes.append(o.size) if isinstance(o, h5py.Dataset) else None)
        return sum(sizes) > 0


def test_shipped_keras_file_has_no_optimizer_state(model_dir):
    assert not keras_file_has_optimizer_state(model_dir / "mask_classifier.keras")


def _copy_some(src, dst, n, suffix="*"):
    dst.mkdir(parents=True)
    files = sorted(src.glob(suffix))[:n]
    for f in files:
        shutil.copy(f, dst / f.name)
    return files


def test_evaluate_crops_cli(data_dir, tmp_path, model_dir, capsys):
    root = tmp_path / "crops"
    _copy_some(data_dir / "chandrikadeb7-facemask" / "with_mask", root / "con_mascarilla", 10)  # alias
    _copy_some(data_dir / "chandrikadeb7-facemask" / "without_mask", root / "without_mask", 10)
    (root / "without_mask" / "notes.jpg").write_text("not an image")
    out = tmp_path / "eval.json"
    assert evaluate.main(["--crops", str(root), "--json", str(out), "--model", str(model_dir)]) == 0
    clf = json.loads(out.read_text())["classifier"]
    assert set(clf) >= {"accuracy", "macro_f1", "per_class", "confusion", "labels"}
    assert clf["labels"] == list(LABELS)
    assert clf["per_class"]["with_mask"]["support"] == 10
    assert clf["per_class"]["without_mask"]["support"] == 10
    assert np.array(clf["confusion"]).sum() == 20
    assert "confusion" in capsys.readouterr().out


def test_evaluate_voc_cli(data_dir, tmp_path, model_dir):
    src = data_dir / "kaggle-facemask"
    xmls = _copy_some(src / "annotations", tmp_path / "ann", 15, "*.xml")
    (tmp_path / "img").mkdir()
    for x in xmls:
        shutil.copy(src / "images" / (x.stem + ".jpg"), tmp_path / "img")
    out = tmp_path / "eval.json"
    rc = evaluate.main(["--images", str(tmp_path / "img"), "--annotations", str(tmp_path / "ann"),
                        "--json", str(out), "--model", str(model_dir),
                        "--label-map", "mask_weared_incorrect=mask_incorrect"])
    assert rc == 0
    clf = json.loads(out.read_text())["classifier"]
    assert clf["n"] == sum(c["support"] for c in clf["per_class"].values()) > 15
    assert 0.5 < clf["accuracy"] <= 1.0


def test_evaluate_tune_side_is_the_detectors_tune_images(data_dir):
    from training.datasets import KAGGLE, load_dataset
    from training.train_detector import SPLIT_SEED, VAL_FRACTION, detector_splits

    fit, tune, _ = detector_splits(data_dir)
    kaggle = load_dataset(KAGGLE, data_dir)
    chosen = evaluate.split_side(kaggle, "tune", VAL_FRACTION, SPLIT_SEED)
    assert [s.path for s in chosen] == [s.path for s in tune]
    val = {s.path for s in evaluate.split_side(kaggle, "val", VAL_FRACTION, SPLIT_SEED)}
    assert not val & {s.path for s in chosen} and not {s.path for s in fit} & {s.path for s in chosen}


def test_evaluate_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        evaluate.main(["--images", str(tmp_path)])  # no --annotations
    with pytest.raises(SystemExit):
        evaluate.main(["--crops", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):
        evaluate.main(["--crops", str(tmp_path), "--label-map", "a=not_a_label"])


def test_recipes_recorded_before_a_field_existed_compare_equal():
    from training.recipe import Recipe
    recorded = Recipe().as_dict()
    del recorded["focal_gamma"]  # a config.json written before focal loss was an option
    assert Recipe.normalised(recorded) == Recipe().as_dict()
    assert Recipe.normalised({**recorded, "focal_gamma": 2.0}) != Recipe().as_dict()


@pytest.mark.slow
def test_focal_loss_recipe_trains(data_dir, weights_dir):
    from training.datasets import limit_per_source, load_all
    from training.faces import FaceSet
    from training.fit import fit_classifier, install_offline_weights
    from training.recipe import Recipe

    install_offline_weights(weights_dir)
    faces = FaceSet(limit_per_source(load_all(data_dir), 3))
    recipe = Recipe(size=64, head_epochs=1, finetune_epochs=1, batch_size=16, focal_gamma=2.0)
    model, history = fit_classifier(faces, recipe)
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    probs = model.predict(np.zeros((2, 64, 64, 3), np.float32), verbose=0)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("schedule, last_rate", [("constant", 1e-4), ("cosine", 0.0)])
def test_finetune_rate_decays_to_zero_by_the_last_step_only_when_asked(schedule, last_rate):
    from training.fit import finetune_rate
    from training.recipe import Recipe

    recipe = Recipe(finetune_lr=1e-4, finetune_epochs=4, finetune_schedule=schedule)
    rate = finetune_rate(recipe, steps_per_epoch=10)
    at = (lambda step: float(rate(step))) if callable(rate) else (lambda step: rate)
    assert at(0) == pytest.approx(1e-4)
    assert at(20) == pytest.approx(1e-4 if schedule == "constant" else 0.5e-4, rel=1e-4)
    assert at(40) == pytest.approx(last_rate, abs=1e-9)


@pytest.mark.parametrize("real_share, real_mask_incorrect_weight", [(0.0, 1.0), (0.5, 2.5), (0.1, 1.0)])
def test_face_weights_give_real_photos_their_share_of_a_class(real_share, real_mask_incorrect_weight):
    from types import SimpleNamespace

    from training.datasets import CHANDRIKA, IMFD, KAGGLE, MASKON
    from training.fit import face_weights
    from training.recipe import Recipe

    # with_mask: 4 photos; mask_incorrect: 1 photo + 4 synthetic; without_mask: 2 photos.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2])
    sources = np.array([KAGGLE, KAGGLE, CHANDRIKA, CHANDRIKA, KAGGLE, MASKON, MASKON, IMFD, IMFD,
                        KAGGLE, CHANDRIKA])
    weights = face_weights(SimpleNamespace(labels=labels, sources=sources),
                           Recipe(balance="none", real_share=real_share))
    class_totals = [weights[labels == c].sum() for c in range(3)]
    assert class_totals == pytest.approx([4, 5, 2])  # the class balance is left as it was
    # real_share 0.1: the photo already holds 1/5 of its class's weight, so nothing moves.
    assert weights[4] == pytest.approx(real_mask_incorrect_weight)
    assert weights[labels != 1] == pytest.approx(1.0)

    balanced = face_weights(SimpleNamespace(labels=labels, sources=sources), Recipe(real_share=real_share))
    assert [balanced[labels == c].sum() for c in range(3)] == pytest.approx([11 / 3] * 3)


def test_bench_prices_an_untrained_candidate_as_it_would_be_served(weights_dir, tmp_path):
    """bench/classifier.py --untrained: the folder loads like a shipped model, with the stated
    input side and width, mirrored crops for still images and a single crop live."""
    from bench.classifier import untrained_model

    folder = untrained_model("0.35:96", tmp_path, weights_dir)
    clf = MaskClassifier(folder)
    assert (clf.input_sizes, clf.contract["members"][0]["alpha"]) == ((96,), 0.35)
    assert clf.decisions(live=False).flip_average and not clf.decisions(live=True).flip_average
    probs = clf.predict_proba({96: np.zeros((2, 96, 96, 3), np.float32)})
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_training_defaults_are_the_shipped_recipe(model_dir):
    """`python -m training.train` with its defaults trains what ships (issue 9): the recipe the
    shipped model recorded is the default one, field for field."""
    from training.recipe import Recipe

    shipped = [net["recipe"] for net in report.members(json.loads((model_dir / "metrics.json").read_text()))]
    defaults = [Recipe()] + [Recipe().changed(spec) for spec in train.parse_args([]).ensemble]
    assert [Recipe.normalised(r) for r in shipped] == [r.as_dict() for r in defaults]


def _synthetic_faces(specs):
    """A FaceSet of plain-colour 'photos', one face each: (label, source, side, colour)."""
    from training.faces import FaceRef, FaceSet

    faces = FaceSet.__new__(FaceSet)
    faces.images, faces.faces = [], []
    for label, source, side, colour in specs:
        image = np.full((2 * side, 2 * side, 3), colour, np.uint8)
        faces.faces.append(FaceRef(len(faces.images), (side / 2, side / 2, 1.5 * side, 1.5 * side),
                                   LABELS.index(label), source, f"g{len(faces.images)}", float(side)))
        faces.images.append(image)
    return faces


def test_a_pulled_down_mask_covers_mouth_and_chin_and_leaves_the_nose():
    from training.faces import face_in_crop, pull_mask_below_nose

    size, margin = 140, 0.2
    face0, fh = face_in_crop(size, margin)
    assert (face0, fh) == pytest.approx((20, 100))
    skin = np.full((size, size, 3), 180, np.uint8)
    mask = np.full((size, size, 3), 250, np.uint8)
    for seed in range(20):
        out = pull_mask_below_nose(skin, mask, margin, np.random.default_rng(seed))
        centre = size // 2
        assert (out[:int(face0 + 0.52 * fh), :] == 180).all()  # forehead, eyes and nose untouched
        assert out[int(face0 + 0.82 * fh), centre, 0] == 250  # the mouth/chin is masked
        assert (out[int(face0 + 0.82 * fh), :int(face0)] == 180).all()  # the background beside
        assert (out[int(face0 + 1.2 * fh):, :] == 180).all()  # the neck below stays the face's own


def test_pulled_mask_relabels_only_unmasked_street_faces_with_a_size_matched_donor():
    from training.datasets import CHANDRIKA, KAGGLE
    from training.faces import MaskDonors, augmented_batch
    from webapp.vision.labels import MASK_INCORRECT, WITH_MASK, WITHOUT_MASK

    faces = _synthetic_faces([
        (WITHOUT_MASK, KAGGLE, 20, 100), (WITHOUT_MASK, CHANDRIKA, 20, 100), (WITH_MASK, KAGGLE, 20, 200),
        (WITH_MASK, KAGGLE, 18, 210), (WITH_MASK, KAGGLE, 200, 30), (WITH_MASK, CHANDRIKA, 20, 60)])
    donors = MaskDonors(faces, KAGGLE)
    rng = np.random.default_rng(0)
    assert {donors.pick(faces.faces[0], rng).short_side for _ in range(50)} == {18.0, 20.0}
    assert donors.takes(faces.faces[0]) and not donors.takes(faces.faces[1])

    x, labels = augmented_batch(faces, np.array([0, 1, 2]), 64, 0.2, np.random.default_rng(1),
                                pulled_mask=1.0, donors=donors)
    assert x.shape == (3, 64, 64, 3)
    assert [LABELS[k] for k in labels] == [MASK_INCORRECT, WITHOUT_MASK, WITH_MASK]
    _, unchanged = augmented_batch(faces, np.array([0, 1, 2]), 64, 0.2, np.random.default_rng(1))
    assert [LABELS[k] for k in unchanged] == [WITHOUT_MASK, WITHOUT_MASK, WITH_MASK]


def test_pulled_faces_weigh_what_the_class_s_photos_weigh():
    from training.datasets import KAGGLE, MASKON
    from training.fit import TrainBatches
    from training.recipe import Recipe
    from webapp.vision.labels import MASK_INCORRECT, WITH_MASK, WITHOUT_MASK

    faces = _synthetic_faces([(WITHOUT_MASK, KAGGLE, 20, 100)] * 4 + [(WITH_MASK, KAGGLE, 20, 200)] * 4
                             + [(MASK_INCORRECT, KAGGLE, 20, 150), (MASK_INCORRECT, MASKON, 20, 150)])
    batches = TrainBatches(faces, Recipe(size=32, batch_size=10, pulled_mask=1.0))
    x, y, w = batches[0]
    pulled = (y.argmax(1) == LABELS.index(MASK_INCORRECT)) & (faces.labels[batches._order[:10]] != 1)
    assert pulled.any()
    assert w[pulled] == pytest.approx(batches.weights[8])  # the real mask_incorrect photo's weight
