"""Augmentations and preprocessors: shapes and dtypes, mask consistency, car-only recolouring, CLAHE."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from plugins.components.augmentations import (  # noqa: E402
    brightness,
    car_hsv_or_gray,
    clahe,
    contrast,
    grayscale,
    hflip,
    hsv,
    saturation,
    shift_scale_rotate,
)

HEIGHT, WIDTH = 37, 53  # not multiples of 32
ALWAYS = {
    hflip: {"p": 1.0},
    shift_scale_rotate: {"p": 1.0},
    brightness: {"p": 1.0},
    contrast: {"p": 1.0},
    saturation: {"p": 1.0},
    hsv: {"p": 1.0},
    grayscale: {"p": 1.0},
    car_hsv_or_gray: {"p": 1.0},
    clahe: {},
}


@pytest.fixture
def sample() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[10:30, 5:40] = 1
    return image, mask


@pytest.mark.parametrize("factory", list(ALWAYS), ids=lambda f: f.__name__)
def test_shapes_and_dtypes_are_kept(factory, sample):
    image, mask = sample
    transform = A.Compose([factory(**ALWAYS[factory])], seed=0)
    out = transform(image=image, mask=mask)
    assert out["image"].shape == image.shape and out["image"].dtype == np.uint8
    assert out["mask"].shape == mask.shape and out["mask"].dtype == np.uint8


def test_hflip_flips_image_and_mask_together(sample):
    image, mask = sample
    out = hflip(p=1.0)(image=image, mask=mask)
    np.testing.assert_array_equal(out["image"], image[:, ::-1])
    np.testing.assert_array_equal(out["mask"], mask[:, ::-1])


@pytest.mark.parametrize("border", ["constant", "reflect"])
def test_geometric_transform_keeps_mask_binary(sample, border):
    image, mask = sample
    transform = A.Compose(
        [shift_scale_rotate(scale=(0.91, 1.21), rotate=10, border=border, p=1.0)], seed=1
    )
    for _ in range(10):
        out = transform(image=image, mask=mask)
        assert set(np.unique(out["mask"])) <= {0, 1}


@pytest.mark.parametrize("gray_probability", [0.0, 1.0], ids=["hsv", "gray"])
def test_car_hsv_or_gray_changes_only_car_pixels(sample, gray_probability):
    image, mask = sample
    transform = A.Compose(
        [car_hsv_or_gray(gray_probability=gray_probability, hue_shift=50, p=1.0)], seed=2
    )
    for _ in range(5):
        out = transform(image=image, mask=mask)
        background, car = mask == 0, mask == 1
        np.testing.assert_array_equal(out["image"][background], image[background])
        assert (out["image"][car] != image[car]).any()
        np.testing.assert_array_equal(out["mask"], mask)


def test_car_hsv_or_gray_needs_the_mask(sample):
    with pytest.raises(ValueError, match="mask"):
        car_hsv_or_gray(p=1.0)(image=sample[0])


def test_clahe_is_deterministic_and_changes_only_luminance():
    # A low-saturation image, so that raising the luminance never clips an RGB channel.
    rng = np.random.default_rng(3)
    grey = rng.integers(60, 140, (HEIGHT, WIDTH, 1))
    image = np.clip(grey + rng.integers(-8, 9, (HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
    transform = clahe()
    first = transform(image=image)["image"]
    np.testing.assert_array_equal(first, transform(image=image)["image"])
    before, after = cv2.cvtColor(image, cv2.COLOR_RGB2YUV), cv2.cvtColor(first, cv2.COLOR_RGB2YUV)
    assert np.abs(after[..., 0].astype(int) - before[..., 0]).max() > 10
    assert np.abs(after[..., 1:].astype(int) - before[..., 1:]).max() <= 2


@pytest.mark.parametrize(
    ("factory", "params"),
    [
        (hflip, {"p": 1.5}),
        (shift_scale_rotate, {"scale": (1.2, 0.9)}),
        (shift_scale_rotate, {"shift": -0.1}),
        (hsv, {"hue_shift": -5.0}),
        (car_hsv_or_gray, {"gray_probability": 2.0}),
        (clahe, {"clip_limit": 0.0}),
    ],
)
def test_bad_parameters_raise_value_error(factory, params):
    with pytest.raises(ValueError):
        factory(**params)
