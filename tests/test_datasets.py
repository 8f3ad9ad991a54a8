"""Readers on generated VOC and class-folder fixtures (with the odd files real datasets have)."""

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import synthetic_face, voc_xml, write_jpeg, write_png
from training.datasets import (
    CHANDRIKA,
    KAGGLE,
    MASKON,
    describe_split,
    face_counts,
    load_all,
    load_dataset,
    near_duplicate_group,
    read_class_folders,
    read_voc,
    split_by_image,
)


@pytest.fixture
def voc_dir(tmp_path: Path) -> Path:
    images, annotations = tmp_path / "images", tmp_path / "annotations"
    images.mkdir()
    annotations.mkdir()
    img = np.zeros((100, 200, 3), np.uint8)
    write_jpeg(images / "a.jpg", img)
    (annotations / "a.xml").write_text(voc_xml("a.jpg", 200, 100, [
        ("with_mask", (10, 10, 40, 40)),
        ("mask_weared_incorrect", (150, 50, 230, 120)),  # runs off the image: clipped
        ("helmet", (0, 0, 5, 5)),  # unknown label: ignored
    ]))
    write_png(images / "b.jpg", img)  # PNG data behind a .jpg name
    (annotations / "b.xml").write_text(voc_xml("b.jpg", 200, 100, [("con_mascarilla", (0, 0, 50, 50))]))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "WEBP")
    (images / "c.png").write_bytes(buf.getvalue())  # WEBP behind a .png name
    (annotations / "c.xml").write_text(voc_xml("c.png", 200, 100, [("without_mask", (5, 5, 25, 30))]))
    (images / "d.jpg").write_text("this is not an image")
    (annotations / "d.xml").write_text(voc_xml("d.jpg", 200, 100, [("with_mask", (5, 5, 25, 30))]))
    write_jpeg(images / "e.jpg", img)
    (images / "e.jpg").write_bytes((images / "e.jpg").read_bytes()[:300])  # truncated
    (annotations / "e.xml").write_text(voc_xml("e.jpg", 200, 100, [("with_mask", (5, 5, 25, 30))]))
    write_jpeg(images / "f.jpg", img)
    (annotations / "f.xml").write_text("<annotation><object>")  # malformed xml
    (annotations / "g.xml").write_text(voc_xml("g.jpg", 10, 10, [("with_mask", (1, 1, 5, 5))]))  # no image
    write_jpeg(images / "h.jpg", img)
    (annotations / "h.xml").write_text(voc_xml("h.jpg", 200, 100, [("with_mask", (300, 300, 400, 400))]))
    return tmp_path


def test_read_voc_reads_by_content_and_maps_labels(voc_dir, caplog):
    with caplog.at_level(logging.WARNING):
        samples = read_voc(voc_dir / "images", voc_dir / "annotations", "fixture")
    by_name = {s.path.stem: s for s in samples}
    assert sorted(by_name) == ["a", "b", "c"]
    a = by_name["a"]
    assert [f.label for f in a.faces] == ["with_mask", "mask_incorrect"]
    assert a.faces[1].box == (150.0, 50.0, 200.0, 100.0)  # clipped to the 200x100 image
    assert by_name["b"].faces[0].label == "with_mask"
    assert by_name["c"].faces[0].label == "without_mask"
    assert (a.width, a.height) == (200, 100)
    text = caplog.text
    assert "skipped 5 of 8 files" in text
    assert "unreadable image: 2" in text and "unreadable annotation: 1" in text
    assert "no image for annotation: 1" in text and "no usable face box: 1" in text
    assert "helmet" in text


def test_read_voc_label_map(voc_dir):
    samples = read_voc(voc_dir / "images", voc_dir / "annotations", "fixture",
                       label_map={"helmet": "without_mask"})
    a = next(s for s in samples if s.path.stem == "a")
    assert [f.label for f in a.faces] == ["with_mask", "mask_incorrect", "without_mask"]


def test_read_class_folders(tmp_path, caplog):
    for folder in ("with_mask", "without_mask", "not_a_label"):
        (tmp_path / folder).mkdir()
    write_jpeg(tmp_path / "with_mask" / "0_0_0 copy 2.jpg", synthetic_face(80, 1))
    write_png(tmp_path / "with_mask" / "x.jpg", synthetic_face(60, 2))
    (tmp_path / "with_mask" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    img = Image.fromarray(synthetic_face(40, 3)[:, :30])  # 30 wide, 40 high, EXIF rotated 90°
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "without_mask" / "r.jpg", exif=exif)
    write_jpeg(tmp_path / "not_a_label" / "z.jpg", synthetic_face(40, 4))
    with caplog.at_level(logging.WARNING):
        samples = read_class_folders(tmp_path, "fixture")
    assert sorted((s.path.name, s.faces[0].label) for s in samples) == [
        ("0_0_0 copy 2.jpg", "with_mask"), ("r.jpg", "without_mask"), ("x.jpg", "with_mask")]
    rotated = next(s for s in samples if s.path.name == "r.jpg")
    assert (rotated.width, rotated.height) == (40, 30)
    assert rotated.faces[0].box == (0.0, 0.0, 40.0, 30.0) and rotated.whole_image
    assert "skipped 1 of 3 files" in caplog.text and "not_a_label" in caplog.text


@pytest.mark.parametrize("stem, group", [
    ("0_0_0 copy 2 2", "0_0_0"), ("0_0_0 copy 14", "0_0_0"), ("0_0_0", "0_0_0"),
    ("with_mask129", "with_mask129"), ("img (3)", "img"), ("augmented_image_12", "augmented_image_12"),
])
def test_near_duplicate_group(stem, group):
    assert near_duplicate_group(stem) == group


def _groups(samples):
    return {(s.source, s.group) for s in samples}


def test_split_keeps_groups_apart_and_is_deterministic(tmp_path):
    for folder in ("with_mask", "without_mask"):
        (tmp_path / folder).mkdir()
        for i in range(12):
            for copy in ("", " copy 1", " copy 2"):
                write_jpeg(tmp_path / folder / f"p{i}{copy}.jpg", synthetic_face(32, i))
    samples = read_class_folders(tmp_path, "fixture")
    train, val = split_by_image(samples, 0.25, seed=3)
    assert not _groups(train) & _groups(val)
    assert len(train) + len(val) == len(samples)
    assert {s.faces[0].label for s in val} == {"with_mask", "without_mask"}  # stratified
    assert split_by_image(samples, 0.25, seed=3) == (train, val)
    assert split_by_image(samples, 0.25, seed=4) != (train, val)
    with pytest.raises(ValueError):
        split_by_image(samples, 1.5)


def test_real_datasets_read_and_split(data_dir, capsys):
    samples = load_all(data_dir)
    counts = face_counts(samples)
    # Counts documented in each dataset's README (dev part).
    assert sum(counts[KAGGLE].values()) == 3253
    assert counts[KAGGLE]["mask_incorrect"] == 92
    assert dict(counts[MASKON]) == {"with_mask": 116, "mask_incorrect": 326}
    assert sum(counts[CHANDRIKA].values()) == 839 + 782
    for s in samples:
        for f in s.faces:
            x0, y0, x1, y1 = f.box
            assert 0 <= x0 < x1 <= s.width and 0 <= y0 < y1 <= s.height
    train, val = split_by_image(samples, 0.25, seed=1234)
    assert not _groups(train) & _groups(val)
    assert not {s.path for s in train} & {s.path for s in val}
    val_counts = face_counts(val)
    assert val_counts[KAGGLE]["mask_incorrect"] >= 20
    assert val_counts[MASKON]["mask_incorrect"] >= 60
    table = describe_split(train, val)
    assert "kaggle-facemask" in table and "val" in table


def test_kaggle_near_duplicates_stay_on_one_side_of_the_split(data_dir):
    import csv

    samples = load_dataset(KAGGLE, data_dir)
    train, val = split_by_image(samples, 0.25, 1234)
    side = {s.path.stem: "val" for s in val} | {s.path.stem: "train" for s in train}
    with open(data_dir / KAGGLE / "near_duplicates.csv", newline="") as fh:
        pairs = [(row["image_a"], row["image_b"]) for row in csv.DictReader(fh)]
    assert pairs
    for a, b in pairs:
        assert side[a] == side[b], (a, b)
