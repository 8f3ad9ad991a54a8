"""Frame scaling for the detectors: the fast way is close to exact area averaging at any size."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from webapp.vision.scaling import scale_to


def smooth_image(h: int, w: int) -> np.ndarray:
    """A photo-like image: random colour blobs, blurred (no single-pixel detail to alias)."""
    rng = np.random.default_rng(h * w)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)


@pytest.mark.parametrize("src, dst", [((480, 640), (192, 256)), ((480, 640), (384, 512)),
                                      ((720, 1280), (288, 512)), ((721, 1283), (288, 512)),
                                      ((480, 640), (144, 192)), ((97, 131), (40, 53))])
def test_shrinking_matches_area_averaging(src, dst):
    image = smooth_image(*src)
    ours = scale_to(image, dst[1], dst[0], fast=True)
    exact = cv2.resize(image, (dst[1], dst[0]), interpolation=cv2.INTER_AREA)
    assert ours.shape == exact.shape and ours.dtype == np.uint8
    assert np.abs(ours.astype(float) - exact).mean() < 2.0  # of 255: the same picture for a model


@pytest.mark.parametrize("fast", [False, True])
def test_enlarging_is_bilinear_and_exact_shrinking_is_area(fast):
    image = smooth_image(50, 60)
    bilinear = cv2.resize(image, (120, 100), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(scale_to(image, 120, 100, fast), bilinear)
    assert np.array_equal(scale_to(image, 60, 50, fast), image)
    assert np.array_equal(scale_to(image, 25, 21), cv2.resize(image, (25, 21), interpolation=cv2.INTER_AREA))
