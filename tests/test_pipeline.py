"""The served pipeline on real images, and every kind of bad input it must refuse cheaply."""

import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest

from tests.helpers import synthetic_face
from webapp.config import Settings
from webapp.vision.labels import LABELS
from webapp.vision.pipeline import (
    FILE_FORMATS,
    Face,
    FrameError,
    FrameResult,
    NotAnImage,
    TooLarge,
    build_pipeline,
    check_image_bytes,
    decode_image,
)


@pytest.fixture(scope="module")
def pipeline(model_dir):
    return build_pipeline(Settings.load({"model_dir": model_dir}))


def _jpeg(img_rgb, quality=90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes()


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def test_real_images_end_to_end(pipeline, data_dir):
    found = 0
    for name in ("maksssksksss1.jpg", "maksssksksss4.jpg", "maksssksksss6.jpg"):
        data = (data_dir / "kaggle-facemask" / "images" / name).read_bytes()
        result = pipeline.process(data)
        assert result.width > 0 and result.height > 0
        for face in result.faces:
            x0, y0, x1, y1 = face.box
            assert 0 <= x0 < x1 <= result.width and 0 <= y0 < y1 <= result.height
            assert face.label in LABELS and 0 <= face.score <= 1
            assert 0 < face.detector_score <= 1
        for face, out in zip(result.faces, result.to_dict()["faces"]):
            assert list(out) == ["box", "label", "score", "det_score", "unsure"]
            assert out["det_score"] == round(face.detector_score, 4)
        assert set(result.ms) == {"decode", "detect", "classify", "total"}
        assert result.ms["total"] >= result.ms["detect"]
        found += len(result.faces)
    assert found >= 5
    close_up = sorted((data_dir / "maskedfacenet-maskon" / "images").glob("*_Mask_Chin.jpg"))[0]
    result = pipeline.process(close_up.read_bytes())
    assert len(result.faces) == 1


def test_png_input_and_empty_frame(pipeline):
    ok, buf = cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))
    result = pipeline.process(buf.tobytes())
    assert (result.width, result.height, result.faces) == (64, 48, [])


BAD_INPUTS = {
    "empty": (b"", NotAnImage),
    "random bytes": (np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes(), NotAnImage),
    "text": (b"hello, I am not an image\n" * 20, NotAnImage),
    "png claiming 60000x60000": (_png_claiming(60000, 60000), TooLarge),
    "jpeg claiming 60000x60000": (_jpeg_claiming(60000, 60000), TooLarge),
    "png 5000x10": (_png_claiming(5000, 10), TooLarge),
    "huge file": (b"\xff\xd8\xff" + b"\0" * (9 * 1024 * 1024), TooLarge),
    "gif": (b"GIF89a" + b"\0" * 100, NotAnImage),
    "not bytes": ("a string", NotAnImage),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_raises_typed_error_with_bounded_memory(pipeline, name):
    data, error = BAD_INPUTS[name]
    tracemalloc.start()
    try:
        with pytest.raises(error) as info:
            pipeline.process(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code in ("too_large", "not_an_image") and info.value.message
    assert peak < 2 * len(data) + 4 * 1024 * 1024  # nothing the size of the claimed pixels


def test_truncated_and_corrupt_jpeg(pipeline):
    data = _jpeg(synthetic_face(200, 1))
    with pytest.raises(NotAnImage, match="truncated"):
        pipeline.process(data[: len(data) // 2])
    corrupt = data[:20] + b"\0" * (len(data) - 22) + data[-2:]
    with pytest.raises(FrameError):
        pipeline.process(corrupt)


def test_formats_are_checked_by_content():
    img = synthetic_face(40, 2)
    ok, webp = cv2.imencode(".webp", img)
    with pytest.raises(NotAnImage, match="found WEBP"):
        check_image_bytes(webp.tobytes())  # frames are JPEG or PNG only
    assert decode_image(webp.tobytes(), formats=FILE_FORMATS).shape == (40, 40, 3)
    assert check_image_bytes(_jpeg(img))[0] == "JPEG"


def test_to_dict_carries_the_detector_confidence():
    """score and det_score are both public, so outside tools can rank by score x det_score (AP)."""
    result = FrameResult(64, 48, [Face((1.04, 2.0, 30.0, 40.26), "with_mask", 0.912345, 0.876543)],
                         {"total": 1.234})
    assert result.to_dict()["faces"] == [
        {"box": [1.0, 2.0, 30.0, 40.3], "label": "with_mask", "score": 0.9123, "det_score": 0.8765, "unsure": False}]
    tracked = FrameResult(64, 48, [Face((0, 0, 9, 9), "without_mask", 0.4, 0.9, unsure=True, track=7)])
    assert tracked.to_dict()["faces"][0] == {"box": [0, 0, 9, 9], "label": "without_mask", "score": 0.4,
                                             "det_score": 0.9, "unsure": True, "track": 7}
