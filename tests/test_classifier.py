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
from webapp.vision.classifier import MaskClassifier, ModelFilesError, contract_members, read_contract
from webapp.vision.crop import crop_faces
from webapp.vision.labels import LABELS


@pytest.fixture(scope="module")
def classifier(model_dir):
    return MaskClassifier(model_dir)


@pytest.fixture(scope="module")
def val_faces(data_dir):
    """Validation faces of the shipped model's split (never trained on, never used to choose)."""
    _, val = split_by_image(load_all(data_dir), VAL_FRACTION, DEV_SPLIT_SEED)
    return FaceSet(val, desc="val")


def random_inputs(classifier, n, seed=0):
    """Random model inputs for ``n`` faces at every input side of ``classifier``."""
    rng = np.random.default_rng(seed)
    return {s: rng.uniform(-1, 1, (n, s, s, 3)).astype(np.float32) for s in classifier.input_sizes}


def test_contract_matches_labels(classifier, model_dir):
    contract = read_contract(model_dir)
    assert tuple(contract["labels"]) == LABELS == classifier.labels
    members = contract_members(contract)
    assert [m.path.name for m in classifier.members] == [m["model_file"] for m in members]
    assert classifier.input_sizes == tuple(dict.fromkeys(m["input_size"] for m in members))


def test_tflite_agrees_with_keras(classifier, model_dir, val_faces):
    """Each network's TFLite file is its Keras file, and the served output is their mean."""
    import keras

    idx = np.linspace(0, len(val_faces) - 1, 48).astype(int)
    inputs = {s: x[idx] for s, x in val_faces.model_inputs(classifier).items()}
    expected = []
    for member in classifier.members:
        x = inputs[member.input_size]
        model = keras.saving.load_model(member.path.with_suffix(".keras"), compile=False)
        expected.append(model.predict(x, verbose=0))
        got = np.concatenate([member.raw_proba(x[:1]), member.raw_proba(x[1:])])
        assert np.abs(got - expected[-1]).max() <= 1e-4, member.path.name
    assert np.abs(classifier.raw_proba(inputs) - np.mean(expected, 0)).max() <= 1e-4


def test_shipped_model_classifies_real_faces(classifier, val_faces):
    pred = np.array(classifier.labels)[classifier.decide(classifier.predict_proba(val_faces.model_inputs(classifier)))]
    true = np.array(LABELS)[val_faces.labels]
    sources = val_faces.sources
    kaggle = classifier_section(true[sources == KAGGLE], pred[sources == KAGGLE])
    assert kaggle["macro_f1"] > 0.65  # chance is ~0.33
    assert kaggle["per_class"]["mask_incorrect"]["recall"] > 0.4
    for source in (MASKON, CHANDRIKA):
        assert classifier_section(true[sources == source], pred[sources == source])["accuracy"] > 0.9


def test_classify_batches_of_any_size(classifier):
    for n in (0, 1, 4, 1):
        preds = classifier.classify(random_inputs(classifier, n))
        assert len(preds) == n
        for p in preds:
            assert p.label in LABELS and 0 <= p.score <= 1 and abs(sum(p.probs) - 1) < 1e-4
    s = classifier.input_sizes[0]
    with pytest.raises(ValueError, match="expected crops of shape"):
        classifier.predict_proba({**random_inputs(classifier, 1), s: np.zeros((1, s + 1, s, 3), np.float32)})
    with pytest.raises(ValueError, match="expected crops at input sides"):
        classifier.predict_proba(np.zeros((1, s, s, 3), np.float32))  # a bare batch, not side -> batch


def test_crop_cuts_each_side_from_the_image(classifier):
    """``crop`` gives every network its own crop of the same faces, cut from the image itself."""
    image = np.random.default_rng(2).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    boxes = [(10, 20, 50, 70), (100, 5, 150, 60)]
    inputs = classifier.crop(image, boxes)
    assert set(inputs) == set(classifier.input_sizes)
    for s, x in inputs.items():
        assert np.array_equal(x, crop_faces(image, boxes, s, classifier.margin))
    assert [x.shape[0] for x in classifier.crop(image, []).values()] == [0] * len(classifier.input_sizes)


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


@pytest.mark.parametrize("members, error", [
    ([], "'members' must list"),
    ([{"model_file": "mask_classifier.tflite"}], "'members' must list"),
    ([{"model_file": "mask_classifier.tflite", "input_size": 97}], "the contract says 97 px"),
    ([{"model_file": "mask_classifier.tflite", "input_size": 224}, {"model_file": "gone.tflite", "input_size": 160}],
     "missing .*gone.tflite"),
])
def test_contract_members_that_cannot_be_served(model_dir, tmp_path, members, error):
    """A contract naming no network, a side its file does not take, or a file that is not there."""
    first = contract_members(read_contract(model_dir))[0]
    shutil.copy(model_dir / first["model_file"], tmp_path / "mask_classifier.tflite")
    members = [{**m, "input_size": first["input_size"]} if m.get("input_size") == 224 else m for m in members]
    contract = {k: v for k, v in read_contract(model_dir).items() if k != "input_size"}
    (tmp_path / "labels.json").write_text(json.dumps({**contract, "members": members}))
    with pytest.raises(ModelFilesError, match=error):
        MaskClassifier(tmp_path)


def test_serving_does_not_import_tensorflow(model_dir):
    code = (
        "import sys, numpy as np\n"
        "from webapp.vision.classifier import MaskClassifier\n"
        f"c = MaskClassifier({str(model_dir)!r})\n"
        "c.classify({s: np.zeros((2, s, s, 3), np.float32) for s in c.input_sizes})\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def with_contract(model_dir, folder, **changes):
    for name in [m["model_file"] for m in contract_members(read_contract(model_dir))] + ["labels.json"]:
        shutil.copy(model_dir / name, folder / name)
    contract = {**json.loads((model_dir / "labels.json").read_text()), **changes}
    (folder / "labels.json").write_text(json.dumps(contract))
    return MaskClassifier(folder)


def test_decisions_from_the_contract(model_dir, tmp_path):
    """Temperature, mirrored-crop averaging and class offsets in labels.json are what is served."""
    crops = random_inputs(MaskClassifier(model_dir), 6, seed=1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = with_contract(model_dir, tmp_path / "a", temperature=1.0, flip_average=False,
                          decision_offsets=[0.0, 0.0, 0.0])
    tuned = with_contract(model_dir, tmp_path / "b", temperature=2.0, flip_average=True,
                          decision_offsets=[0.0, 5.0, 0.0],
                          live={"temperature": 1.0, "flip_average": False, "decision_offsets": [0.0, 0.0, 0.0]})
    raw = plain.raw_proba(crops)
    mirrored = (raw + plain.raw_proba({s: np.ascontiguousarray(x[:, :, ::-1]) for s, x in crops.items()})) / 2
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
