"""Readers for the face-mask datasets, mapped onto the canonical labels, and a leak-free split.

Two layouts are understood: PASCAL VOC (an ``images/`` and an ``annotations/`` folder;
kaggle-facemask, maskedfacenet-maskon) and class folders (one sub-folder per label whose
images are already face crops; chandrikadeb7-facemask). Real datasets contain odd files
(wrong extensions, a WEBP named .jpg, truncated or non-image files), so every image is
identified and test-decoded by content, never by its name, and whatever cannot be read is
skipped and counted in one warning per folder.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from webapp.vision.labels import LABELS, MASK_INCORRECT, WITH_MASK, WITHOUT_MASK, canonical_label

log = logging.getLogger(__name__)

KAGGLE = "kaggle-facemask"
MASKON = "maskedfacenet-maskon"
CHANDRIKA = "chandrikadeb7-facemask"
IMFD = "maskedfacenet-imfd-extra"  # synthetic nose-uncovered close-ups, one per image

# Images bigger than this are refused while reading datasets (decompression bombs).
MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, clipped to the image
    label: str  # canonical label


@dataclass(frozen=True)
class Sample:
    """One source image and its labelled faces."""

    source: str  # dataset name
    path: Path
    group: str  # images sharing a group never land on both sides of a split
    width: int
    height: int
    faces: tuple[Face, ...]
    # True for class-folder images: the whole picture is the face, so EXIF orientation applies.
    whole_image: bool = False


class SkipLog:
    """Counts files skipped per reason and reports them in one warning."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.reasons: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def skip(self, reason: str, path: Path) -> None:
        self.reasons[reason] += 1
        self.examples.setdefault(reason, path.name)

    def report(self, kept: int) -> None:
        total = sum(self.reasons.values())
        if total:
            detail = ", ".join(f"{reason}: {n} (e.g. {self.examples[reason]})"
                               for reason, n in self.reasons.most_common())
            log.warning("%s: skipped %d of %d files (%s)", self.where, total, total + kept, detail)


def probe_image(path: Path) -> tuple[int, int]:
    """(width, height) of a readable image, checked by decoding it; raises ``OSError`` if not.

    JPEGs are decoded in draft mode (1/8 scale), which still walks the whole entropy-coded
    stream, so truncated files are caught at a fraction of the cost of a full decode.
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise OSError(f"image too large ({width}x{height})")
            im.draft("RGB", (max(width // 8, 1), max(height // 8, 1)))
            im.load()
            return width, height
    except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        raise OSError(str(exc)) from exc


def read_rgb(path: Path, orient: bool = False) -> np.ndarray:
    """Decode any image Pillow knows (by content) into an HxWx3 uint8 RGB array."""
    with Image.open(path) as im:
        if orient:
            im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower() != "readme.md")


def _clip(box: tuple[float, float, float, float], width: int, height: int
          ) -> tuple[float, float, float, float] | None:
    x0, y0, x1, y1 = box
    x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
    y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return x0, y0, x1, y1


def _parse_voc(xml_path: Path) -> list[tuple[str, tuple[float, float, float, float]]]:
    root = ET.parse(xml_path).getroot()
    objects = []
    for obj in root.iter("object"):
        name = obj.findtext("name", default="")
        bb = obj.find("bndbox")
        if bb is None:
            continue
        coords = tuple(float(bb.findtext(k, default="nan")) for k in ("xmin", "ymin", "xmax", "ymax"))
        if any(np.isnan(coords)):
            continue
        objects.append((name, coords))
    return objects


def _resolver(label_map: Mapping[str, str] | None) -> Callable[[str], str | None]:
    """Dataset label -> canonical label, applying a user's ``label_map`` before the aliases."""
    mapping = {k.strip().lower(): v for k, v in (label_map or {}).items()}
    return lambda name: canonical_label(mapping.get(name.strip().lower(), name))


def read_voc(images_dir: Path, annotations_dir: Path, source: str,
             group_of: Callable[[str], str] = lambda stem: stem,
             label_map: Mapping[str, str] | None = None) -> list[Sample]:
    """Read a PASCAL VOC folder pair; the image is found by the annotation's base name."""
    resolve = _resolver(label_map)
    skips = SkipLog(f"{source} ({annotations_dir})")
    images_by_stem: dict[str, Path] = {}
    for p in _image_files(images_dir):
        images_by_stem.setdefault(p.stem, p)
    samples: list[Sample] = []
    unknown_labels: Counter[str] = Counter()
    for xml_path in sorted(annotations_dir.glob("*.xml")):
        image_path = images_by_stem.get(xml_path.stem)
        if image_path is None:
            skips.skip("no image for annotation", xml_path)
            continue
        try:
            objects = _parse_voc(xml_path)
        except (ET.ParseError, ValueError):
            skips.skip("unreadable annotation", xml_path)
            continue
        try:
            width, height = probe_image(image_path)
        except OSError:
            skips.skip("unreadable image", image_path)
            continue
        faces = []
        for name, box in objects:
            label = resolve(name)
            clipped = _clip(box, width, height)
            if label is None:
                unknown_labels[name] += 1
            elif clipped is not None:
                faces.append(Face(clipped, label))
        if not faces:
            skips.skip("no usable face box", xml_path)
            continue
        samples.append(Sample(source, image_path, group_of(xml_path.stem), width, height,
                              tuple(faces)))
    if unknown_labels:
        log.warning("%s: ignored boxes with unknown labels: %s", source, dict(unknown_labels))
    skips.report(len(samples))
    return samples


_COPY_SUFFIX = re.compile(r"(\s+copy)?(\s+\d+|\s*\(\d+\))*$", re.IGNORECASE)


def near_duplicate_group(stem: str) -> str:
    """'0_0_0 copy 2 2' and '0_0_0 copy 14' are augmented copies of '0_0_0': one group."""
    return _COPY_SUFFIX.sub("", stem) or stem


def read_class_folders(root: Path, source: str,
                       label_map: Mapping[str, str] | None = None) -> list[Sample]:
    """Read ``root/<label>/*`` where each image is a single face filling the picture."""
    resolve = _resolver(label_map)
    samples: list[Sample] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = resolve(folder.name)
        if label is None:
            log.warning("%s: ignoring folder %s (not a known label)", source, folder.name)
            continue
        skips = SkipLog(f"{source}/{folder.name}")
        kept = 0
        for path in _image_files(folder):
            try:
                width, height = probe_image(path)
            except OSError:
                skips.skip("unreadable image", path)
                continue
            # EXIF rotation swaps the visible width and height; the box is the whole picture.
            with Image.open(path) as im:
                orientation = im.getexif().get(0x0112, 1)
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            samples.append(Sample(source, path, f"{label}/{near_duplicate_group(path.stem)}",
                                  width, height,
                                  (Face((0.0, 0.0, float(width), float(height)), label),),
                                  whole_image=True))
            kept += 1
        skips.report(kept)
    return samples


def _maskon_group(stem: str) -> str:
    # 00002_Mask and 00002_Mask_Chin are the same FFHQ person: keep them together.
    return stem.split("_", 1)[0]


def _kaggle_groups(root: Path) -> Callable[[str], str]:
    """Images listed together in ``near_duplicates.csv`` (the same picture twice) share a group."""
    pairs: dict[str, str] = {}
    listing = root / "near_duplicates.csv"
    if listing.is_file():
        with open(listing, newline="") as fh:
            for row in csv.DictReader(fh):
                a, b = sorted((row["image_a"], row["image_b"]))
                pairs[b] = pairs.get(a, a)
    return lambda stem: pairs.get(stem, stem)


_GROUP_BY = {MASKON: lambda root: _maskon_group, KAGGLE: _kaggle_groups}


def read_voc_folder(images_dir: Path, annotations_dir: Path,
                    label_map: Mapping[str, str] | None = None) -> list[Sample]:
    """A VOC dataset named after the folder holding ``images/`` (kaggle-facemask/images ->
    "kaggle-facemask"), grouped as that dataset is, so splits match the training split."""
    source = Path(images_dir).resolve().parent.name
    group_of = _GROUP_BY[source](Path(images_dir).resolve().parent) if source in _GROUP_BY else (lambda stem: stem)
    return read_voc(Path(images_dir), Path(annotations_dir), source, group_of=group_of, label_map=label_map)


def load_dataset(name: str, data_dir: Path) -> list[Sample]:
    """Read one of the known datasets from ``data_dir/<name>``."""
    root = Path(data_dir) / name
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if name in (KAGGLE, MASKON, IMFD):
        return read_voc_folder(root / "images", root / "annotations")
    if name == CHANDRIKA:
        return read_class_folders(root, name)
    raise ValueError(f"unknown dataset {name!r}")


ALL_DATASETS = (KAGGLE, MASKON, CHANDRIKA, IMFD)


def load_all(data_dir: Path, names: Iterable[str] = ALL_DATASETS) -> list[Sample]:
    """Every available dataset; a missing one is a warning, not an error."""
    samples: list[Sample] = []
    for name in names:
        try:
            samples.extend(load_dataset(name, data_dir))
        except FileNotFoundError as exc:
            log.warning("%s", exc)
    return samples


# Rarest first: a group goes to the stratum of the rarest label it contains.
_RARITY = (MASK_INCORRECT, WITHOUT_MASK, WITH_MASK)


def _stable_rank(seed: int, *parts: str) -> str:
    return hashlib.sha1(":".join((str(seed),) + parts).encode()).hexdigest()


def _ranked_strata(samples: Sequence[Sample], seed: int) -> list[list[tuple[str, str]]]:
    """The (source, group) keys of each source and rarest-label stratum, in a seeded hash order.

    A group goes to the stratum of the rarest label it contains; ordering by a hash of
    (seed, source, group) rather than a shuffled list keeps each image's side stable when other
    files are added or removed.
    """
    groups: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in samples:
        groups[(s.source, s.group)].update(f.label for f in s.faces)
    strata: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for key, present in groups.items():
        strata[(key[0], next(label for label in _RARITY if label in present))].append(key)
    return [sorted(keys, key=lambda k: _stable_rank(seed, *k)) for keys in strata.values()]


def split_by_image(samples: Sequence[Sample], val_fraction: float = 0.25, seed: int = 0
                   ) -> tuple[list[Sample], list[Sample]]:
    """Deterministic train/validation split by source image group, stratified by rarest label."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    val_keys = {key for keys in _ranked_strata(samples, seed)
                for key in keys[:int(round(len(keys) * val_fraction))]}
    train = [s for s in samples if (s.source, s.group) not in val_keys]
    val = [s for s in samples if (s.source, s.group) in val_keys]
    return train, val


def assign_folds(samples: Sequence[Sample], folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold number (0..folds-1) of each sample for k-fold cross-validation by image group.

    Groups never straddle folds, and each stratum is dealt out round-robin, so every fold gets
    its share of the rare mask_incorrect images.
    """
    if folds < 2:
        raise ValueError("need at least 2 folds")
    fold_of = {key: i % folds for keys in _ranked_strata(samples, seed) for i, key in enumerate(keys)}
    return np.array([fold_of[(s.source, s.group)] for s in samples], dtype=np.int64)


def limit_per_source(samples: Sequence[Sample], n: int) -> list[Sample]:
    """The first ``n`` samples of each source (smoke tests)."""
    taken: Counter[str] = Counter()
    kept = []
    for s in samples:
        if taken[s.source] < n:
            taken[s.source] += 1
            kept.append(s)
    return kept


def face_counts(samples: Iterable[Sample]) -> dict[str, Counter[str]]:
    """Faces per label, per source."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for s in samples:
        for f in s.faces:
            counts[s.source][f.label] += 1
    return dict(counts)


def describe_split(train: Sequence[Sample], val: Sequence[Sample]) -> str:
    """A table of faces (and images) per source and label on each side of the split."""
    lines = [f"{'source':26s} {'side':5s} {'images':>6s} " + " ".join(f"{lab:>14s}" for lab in LABELS)]
    for side, part in (("train", train), ("val", val)):
        counts = face_counts(part)
        for source in sorted(counts):
            n_images = sum(1 for s in part if s.source == source)
            lines.append(f"{source:26s} {side:5s} {n_images:6d} "
                         + " ".join(f"{counts[source][lab]:14d}" for lab in LABELS))
    return "\n".join(lines)
