"""The shipped classifier: TFLite agrees with Keras, scores real validation faces well, no TF at serve time."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from training.crossval import DEV_SPLIT_SEED, VAL_FRACTION
from training.datasets import CHANDRIKA, KAGGLE, MASKON, load_all, split_by_image
from training.faces import FaceSet
from training.metrics import classifier_section
from webapp.vision.classifier import MaskClassifier, ModelFilesError, read_contract
from webapp.vision.crop import to_model_input
from webapp.vision.labels import LABELS


@pytest.fixture(scope="module")
def classifier(model_dir):
    return MaskClassifier(model_dir)


@pytest.fixture(scope="module")
def val_faces(data_dir):
    """Validation faces of the shipped model's split (never trained on, never used to choose)."""
    _, val = split_by_image(load_all(data_dir), VAL_FRACTION, DEV_SPLIT_SEED)
    return FaceSet(val, desc="val")


def test_contract_matches_labels(classifier, model_dir):
    contract = read_contract(model_dir)
    assert tuple(contract["labels"]) == LABELS == classifier.labels
    assert classifier.input_size == contract["input_size"]


def test_tflite_agrees_with_keras(classifier, model_dir, val_faces):
    import keras

    idx = np.linspace(0, len(val_faces) - 1, 48).astype(int)
    crops = to_model_input(val_faces.crops(classifier.input_size, classifier.margin)[idx])
    model = keras.saving.load_model(model_dir / "mask_classifier.keras", compile=False)
    expected = model.predict(crops, verbose=0)
    got = np.concatenate([classifier.raw_proba(crops[:1]), classifier.raw_proba(crops[1:])])
    assert np.abs(got - expected).max() <= 1e-4


def test_shipped_model_classifies_real_faces(classifier, val_faces):
    crops = to_model_input(val_faces.crops(classifier.input_size, classifier.margin))
    pred = np.array(classifier.labels)[classifier.decide(classifier.predict_proba(crops))]
    true = np.array(LABELS)[val_faces.labels]
    sources = val_faces.sources
    kaggle = classifier_section(true[sources == KAGGLE], pred[sources == KAGGLE])
    assert kaggle["macro_f1"] > 0.65  # chance is ~0.33
    assert kaggle["per_class"]["mask_incorrect"]["recall"] > 0.4
    for source in (MASKON, CHANDRIKA):
        assert classifier_section(true[sources == source], pred[sources == source])["accuracy"] > 0.9


def test_classify_batches_of_any_size(classifier):
    s = classifier.input_size
    rng = np.random.default_rng(0)
    for n in (0, 1, 4, 1):
        preds = classifier.classify(rng.uniform(-1, 1, (n, s, s, 3)).astype(np.float32))
        assert len(preds) == n
        for p in preds:
            assert p.label in LABELS and 0 <= p.score <= 1 and abs(sum(p.probs) - 1) < 1e-4
    with pytest.raises(ValueError, match="expected crops"):
        classifier.predict_proba(np.zeros((1, s + 1, s, 3), np.float32))


def test_missing_or_broken_model_files(tmp_path, model_dir):
    with pytest.raises(ModelFilesError, match="labels.json"):
        MaskClassifier(tmp_path)
    (tmp_path / "labels.json").write_text("{not json")
    with pytest.raises(ModelFilesError, match="not valid JSON"):
        MaskClassifier(tmp_path)
    (tmp_path / "labels.json").write_text((model_dir / "labels.json").read_text())
    with pytest.raises(ModelFilesError, match="missing"):
        MaskClassifier(tmp_path)
    (tmp_path / "mask_classifier.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(ModelFilesError, match="cannot load"):
        MaskClassifier(tmp_path)


def test_serving_does_not_import_tensorflow(model_dir):
    code = (
        "import sys, numpy as np\n"
        "from webapp.vision.classifier import MaskClassifier\n"
        f"c = MaskClassifier({str(model_dir)!r})\n"
        "c.classify(np.zeros((2, c.input_size, c.input_size, 3), np.float32))\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def with_contract(model_dir, folder, **changes):
    for name in ("mask_classifier.tflite", "labels.json"):
        shutil.copy(model_dir / name, folder / name)
    contract = {**json.loads((model_dir / "labels.json").read_text()), **changes}
    (folder / "labels.json").write_text(json.dumps(contract))
    return MaskClassifier(folder)


def test_decisions_from_the_contract(model_dir, tmp_path):
    """Temperature, mirrored-crop averaging and class offsets in labels.json are what is served."""
    s = MaskClassifier(model_dir).input_size
    crops = np.random.default_rng(1).uniform(-1, 1, (6, s, s, 3)).astype(np.float32)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = with_contract(model_dir, tmp_path / "a", temperature=1.0, flip_average=False,
                          decision_offsets=[0.0, 0.0, 0.0])
    tuned = with_contract(model_dir, tmp_path / "b", temperature=2.0, flip_average=True,
                          decision_offsets=[0.0, 5.0, 0.0],
                          live={"temperature": 1.0, "flip_average": False, "decision_offsets": [0.0, 0.0, 0.0]})
    raw = plain.raw_proba(crops)
    mirrored = (raw + plain.raw_proba(np.ascontiguousarray(crops[:, :, ::-1]))) / 2
    expected = np.sqrt(mirrored) / np.sqrt(mirrored).sum(1, keepdims=True)  # softmax(log p / 2)
    assert np.allclose(tuned.predict_proba(crops), expected, atol=1e-5)
    assert np.array_equal(plain.decide(raw), raw.argmax(1))
    assert all(p.label == "mask_incorrect" for p in tuned.classify(crops))  # a large offset wins
    # live video: its own section - here one single crop, no temperature, no offsets
    assert np.allclose(tuned.predict_proba(crops, live=True), raw, atol=1e-6)
    assert [p.label for p in tuned.classify(crops, live=True)] == [plain.labels[i] for i in raw.argmax(1)]
    for n, bad in enumerate(({"temperature": -1.0}, {"live": {"temperature": 0.0}})):
        (tmp_path / f"c{n}").mkdir()
        with pytest.raises(ModelFilesError, match="temperature"):
            with_contract(model_dir, tmp_path / f"c{n}", **bad)
