import numpy as np
import pytest

from webapp.vision.crop import crop_faces, cut_face, square_region, to_model_input


def test_square_region_is_centred_and_padded():
    left, top, right, bottom = square_region((10, 20, 30, 60), margin=0.25)
    assert right - left == bottom - top == 60  # longer side 40 * 1.5
    assert (left + right) / 2 == 20 and (top + bottom) / 2 == 40


def test_cut_face_shape_and_content():
    img = np.zeros((100, 200, 3), np.uint8)
    img[40:60, 90:110] = 255
    crop = cut_face(img, (90, 40, 110, 60), size=64, margin=0.0)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    assert crop.mean() > 250  # the box itself, resized


def test_cut_face_outside_repeats_edge():
    img = np.zeros((50, 50, 3), np.uint8)
    img[:, :5] = (255, 0, 0)  # left edge is red
    crop = cut_face(img, (-20, 10, 10, 40), size=32, margin=0.2)
    assert crop.shape == (32, 32, 3)
    assert (crop[:, :4, 0] == 255).all() and (crop[:, :4, 1] == 0).all()


def test_cut_face_region_fully_outside_and_degenerate_box():
    img = np.full((20, 20, 3), 7, np.uint8)
    assert (cut_face(img, (100, 100, 120, 120), size=16) == 7).all()
    assert cut_face(img, (5, 5, 5, 5), size=16).shape == (16, 16, 3)


def test_cut_face_rejects_grey_images():
    with pytest.raises(ValueError):
        cut_face(np.zeros((10, 10), np.uint8), (0, 0, 5, 5))


def test_scaling_and_batch():
    x = to_model_input(np.array([[[[0, 127.5, 255]]]], np.float32))
    assert np.allclose(x, [-1, 0, 1])
    img = np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8)
    batch = crop_faces(img, [(0, 0, 10, 10), (30, 30, 70, 50)], size=48)
    assert batch.shape == (2, 48, 48, 3) and batch.dtype == np.float32
    assert batch.min() >= -1 and batch.max() <= 1
    assert crop_faces(img, [], size=48).shape == (0, 48, 48, 3)
