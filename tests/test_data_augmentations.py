"""Augmentation ops: identity at zero, per-image draws, seeds; numpy, tf.image, PIL references."""
import functools
import math

import numpy as np
import pytest
import tensorflow as tf
from matplotlib import cbook
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

import data_augmentations as aug
from helpers import random_op
from vitcifar.config.settings import RANDAUGMENT_OPS, Augmentation
from vitcifar.ops import pixel_ops

SEED = tf.constant([3, 4])


def random_images(n, size=32, seed=0, low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, (n, size, size, 3), dtype=np.uint8)


def transform(images, sampling):
    """projective_transform on uint8 numpy images, rounded back to uint8."""
    out = aug.projective_transform(tf.constant(images, tf.float32), sampling)
    return np.round(out.numpy()).astype(np.uint8)


def per_image(value, n):
    return tf.fill([n], float(value))


# Every batch op, as (images, seed, magnitude) -> images, with a strong magnitude.
OPS = {
    "rotation": (random_op("rotation"), 30.0),
    "shear": (random_op("shear"), 0.3),
    "zoom": (random_op("zoom"), 0.3),
    "translation": (random_op("translation"), 0.2),
    "hue": (random_op("hue"), 0.3),
    "saturation": (random_op("saturation"), 0.8),
    "brightness": (random_op("brightness"), 0.3),
    "contrast": (random_op("contrast"), 0.8),
    "crop": (random_op("crop"), 4),
    # the pixel ops with a magnitude, as RandAugment applies them (autocontrast and equalize
    # have none: an image gets them or not)
    **{op: (lambda images, seed, bound, op=op: aug.apply_ops(images, seed, {op: bound}), 1.0)
       for op in ("posterize", "solarize", "sharpness")},
    "erasing": (lambda images, seed, area: aug.random_erasing(images, seed, 1.0, area), 0.4),
    "randaugment": (lambda images, seed, magnitude: aug.rand_augment(
        images, seed, RANDAUGMENT_OPS, 2, magnitude, 1.0), 15.0),
}


@pytest.mark.parametrize("name", OPS)
def test_zero_magnitude_is_the_identity_and_shape_and_dtype_are_kept(name):
    op, magnitude = OPS[name]
    images = random_images(8)
    np.testing.assert_array_equal(op(tf.constant(images), SEED, 0 * magnitude), images)
    out = op(tf.constant(images), SEED, magnitude)
    assert out.dtype == tf.uint8 and out.shape == images.shape
    assert not np.array_equal(out, images)


@pytest.mark.parametrize("name", OPS)
def test_each_image_draws_its_own_parameters(name):
    op, magnitude = OPS[name]
    copies = np.repeat(random_images(1, seed=1), 16, axis=0)       # one image, 16 times
    out = op(tf.constant(copies), SEED, magnitude).numpy()
    distinct_outcomes = 5 if name == "posterize" else 16      # posterize: 8 down to 4 bits
    assert len({image.tobytes() for image in out}) >= min(12, distinct_outcomes - 1)


@pytest.mark.parametrize("name", OPS)
def test_same_seed_same_output_other_seed_other_output(name):
    op, magnitude = OPS[name]
    images = tf.constant(random_images(8, seed=2))
    first = op(images, tf.constant([5, 6]), magnitude)
    np.testing.assert_array_equal(first, op(images, tf.constant([5, 6]), magnitude))
    assert not np.array_equal(first, op(images, tf.constant([5, 7]), magnitude))


# --- geometry against numpy -------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 31])
def test_rotation_by_quarter_turns_is_rot90(size):
    images = random_images(3, size)
    for degrees, turns in [(90, 1), (-90, -1), (180, 2)]:
        out = transform(images, aug.rotation_matrix(per_image(degrees, 3)))
        np.testing.assert_array_equal(out, np.rot90(images, turns, axes=(1, 2)))


def shifted(images, dy, dx):
    """(B, H, W, C) images moved down by dy and right by dx pixels, zero where nothing moved in."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        images[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_shear_moves_each_row_by_its_distance_from_the_centre():
    images = random_images(2, 33)                       # centre row and column 16
    out = transform(images, aug.shear_matrix(per_image(1.0, 2), per_image(0.0, 2)))
    for y in range(33):                                 # row y moves right by y - 16
        np.testing.assert_array_equal(out[:, y], shifted(images, 0, y - 16)[:, y])
    out = transform(images, aug.shear_matrix(per_image(0.0, 2), per_image(-1.0, 2)))
    for x in range(33):                                 # column x moves up by x - 16
        np.testing.assert_array_equal(out[:, :, x], shifted(images, 16 - x, 0)[:, :, x])


def test_scale_two_magnifies_about_the_centre_and_minus_one_mirrors():
    images = random_images(2, 33)
    zoomed = transform(images, aug.scale_matrix(per_image(2, 2), per_image(2, 2)))
    np.testing.assert_array_equal(zoomed[:, ::2, ::2], images[:, 8:25, 8:25])
    mirrored = transform(images, aug.scale_matrix(per_image(-1, 2), per_image(1, 2)))
    np.testing.assert_array_equal(mirrored, images[:, :, ::-1])


def test_translation_and_composition_order():
    images = random_images(2)
    moved = transform(images, aug.translation_matrix(per_image(3, 2), per_image(-2, 2)))
    np.testing.assert_array_equal(moved, shifted(images, -2, 3))
    # sampling(A) @ sampling(B) does A to the picture first: rotate, then move right.
    turn, right = aug.rotation_matrix(per_image(90, 2)), aug.translation_matrix(
        per_image(5, 2), per_image(0, 2))
    expected = shifted(np.rot90(images, 1, axes=(1, 2)), 0, 5)
    np.testing.assert_array_equal(transform(images, turn @ right), expected)
    assert not np.array_equal(transform(images, right @ turn), expected)


def spot_centroids(out, centre):
    """(x, y) of each image's intensity centroid, from the image centre (y down)."""
    weights = out[..., 0].astype(float)
    ys, xs = np.mgrid[:out.shape[1], :out.shape[2]]
    total = weights.sum(axis=(1, 2))
    return ((weights * xs).sum(axis=(1, 2)) / total - centre,
            (weights * ys).sum(axis=(1, 2)) / total - centre)


def test_random_geometry_draws_within_its_bounds():
    spot = np.zeros((64, 33, 33, 3), np.uint8)
    spot[:, 15:18, 23:26] = 255                         # a 3x3 spot 8 pixels right of centre
    x, y = spot_centroids(random_op("rotation")(tf.constant(spot), SEED, 30.0).numpy(), 16)
    angles = np.degrees(np.arctan2(-y, x))              # counter-clockwise as displayed
    np.testing.assert_allclose(np.hypot(x, y), 8, atol=0.3)
    assert np.abs(angles).max() <= 30.5 and angles.std() > 10
    x, y = spot_centroids(random_op("translation")(tf.constant(spot), SEED, 0.1).numpy(), 16)
    assert np.abs(x - 8).max() <= 3.3 + 0.1 and np.abs(y).max() <= 3.3 + 0.1
    assert np.abs(x - 8).std() > 1 and np.abs(y).std() > 1
    x, y = spot_centroids(random_op("zoom")(tf.constant(spot), SEED, 0.25).numpy(), 16)
    scale = np.hypot(x, y) / 8
    assert 0.75 - 0.02 <= scale.min() and scale.max() <= 1.25 + 0.02 and scale.std() > 0.1


# --- colour against tf.image ------------------------------------------------------------------

def float_images(n, seed=0, low=0.0, high=1.0):
    return tf.constant(np.random.default_rng(seed).uniform(low, high, (n, 8, 8, 3)), tf.float32)


def test_brightness_and_contrast_are_tf_image_with_a_factor_per_image():
    images = float_images(4)
    deltas, factors = [-0.3, 0.0, 0.2, 0.5], [0.2, 1.0, 1.5, 3.0]
    bright = aug.color_transform(images, 0.0, 1.0, deltas, 1.0)
    contrast = aug.color_transform(images, 0.0, 1.0, 0.0, factors)
    for i in range(4):
        np.testing.assert_allclose(bright[i], tf.clip_by_value(
            tf.image.adjust_brightness(images[i], deltas[i]), 0, 1), atol=1e-5)
        np.testing.assert_allclose(contrast[i], tf.clip_by_value(
            tf.image.adjust_contrast(images[i], factors[i]), 0, 1), atol=1e-5)


def test_hue_turns_about_the_grey_axis():
    images = float_images(4)
    out = aug.color_transform(images, [1 / 3, 2 / 3, 1.0, 0.0], 1.0, 0.0, 1.0).numpy()
    np.testing.assert_allclose(out[0], np.roll(images[0], 1, axis=-1), atol=1e-5)  # r->g->b
    np.testing.assert_allclose(out[0], tf.image.adjust_hue(images[0], 1 / 3), atol=1e-5)
    np.testing.assert_allclose(out[1], np.roll(images[1], 2, axis=-1), atol=1e-5)
    np.testing.assert_allclose(out[2:], images[2:], atol=1e-5)
    grey = tf.tile(float_images(2)[..., :1], [1, 1, 1, 3])
    np.testing.assert_allclose(aug.color_transform(grey, [0.1, -0.4], 1.0, 0.0, 1.0), grey,
                               atol=1e-5)


def test_saturation_zero_is_tf_image_grayscale():
    images = float_images(2)
    out = aug.color_transform(images, 0.0, [0.0, 1.0], 0.0, 1.0)
    np.testing.assert_allclose(out[0], tf.tile(tf.image.rgb_to_grayscale(images[0]), [1, 1, 3]),
                               atol=1e-5)
    np.testing.assert_allclose(out[1], images[1], atol=1e-6)


def test_colour_ops_compose_as_applied_one_after_another():
    images = float_images(3, low=0.4, high=0.6)          # nothing clips along the way
    hue, sat, bright, contrast = [0.1, -0.2, 0.05], [1.2, 0.7, 1.0], [0.05, -0.1, 0.0], \
        [0.8, 1.3, 1.1]
    one_by_one = images
    for args in [(hue, 1.0, 0.0, 1.0), (0.0, sat, 0.0, 1.0), (0.0, 1.0, bright, 1.0),
                 (0.0, 1.0, 0.0, contrast)]:
        one_by_one = aug.color_transform(one_by_one, *args)
    np.testing.assert_allclose(aug.color_transform(images, hue, sat, bright, contrast),
                               one_by_one, atol=1e-5)


def test_colour_saturates_at_the_ends_of_the_range_instead_of_wrapping():
    ends = np.concatenate([np.zeros((16, 4, 4, 3), np.uint8), np.full((16, 4, 4, 3), 255,
                                                                      np.uint8)])
    for op, bound in [(random_op("brightness"), 0.5), (random_op("contrast"), 1.0)]:
        out = op(tf.constant(ends), SEED, bound).numpy()
        assert out[:16].max() <= 128 and out[16:].min() >= 127


# --- RandAugment --------------------------------------------------------------------------------

def test_choose_ops_gives_each_image_n_distinct_ops_of_its_own():
    mask = aug.choose_ops(SEED, 400, 8, 2, 1.0).numpy()
    assert set(mask.sum(axis=1)) == {2.0}
    assert len({row.tobytes() for row in mask}) == 28            # all 8-choose-2 pairs occur
    np.testing.assert_allclose(mask.mean(axis=0), 2 / 8, atol=0.07)
    halved = aug.choose_ops(SEED, 400, 8, 2, 0.5).numpy()
    assert halved.sum(axis=1).max() <= 2 and abs(halved.sum() / 400 - 1.0) < 0.15


def test_rand_augment_applies_to_each_image_only_the_ops_it_got():
    images = random_images(64, low=60, high=190)                 # brightness never clips
    out = aug.rand_augment(tf.constant(images), SEED, ("brightness", "translation"), 1, 9.0,
                           1.0).numpy().astype(int)
    change = out - images
    uniform = np.array([len(np.unique(c)) == 1 for c in change])   # brightness: one delta
    assert 16 < uniform.sum() < 48
    # the others were translated: shifted content, the same colours
    assert all(len(np.unique(c)) > 1 for c in change[~uniform])


def test_the_training_augmentation_is_vectorised_with_one_transform():
    function = tf.function(lambda images, labels, seed: aug.augment_batch(
        images, labels, seed, Augmentation(
            crop_padding=4, flip=True, vertical_flip=True, randaugment_ops=RANDAUGMENT_OPS,
            randaugment_n=3, randaugment_magnitude=9.0, randaugment_prob=0.8,
            erasing_prob=0.5, erasing_max_area=0.3, mixup_alpha=0.2, cutmix_alpha=1.0)))
    graph = function.get_concrete_function(
        tf.TensorSpec([None, 32, 32, 3], tf.uint8), tf.TensorSpec([None, 10], tf.float32),
        tf.TensorSpec([2], tf.int64)).graph
    kinds = [op.type for op in graph.get_operations()]
    assert kinds.count("ImageProjectiveTransformV3") == 1
    assert not {"While", "StatelessWhile", "If", "StatelessIf", "MapDataset"} & set(kinds)


def test_each_output_image_comes_from_its_own_input_image_only():
    """No cross-talk between images (so labels stay with them): changing image 5 of the
    batch changes output 5 only."""
    images = random_images(12)
    other = images.copy()
    other[5] = 255 - other[5]
    labels = tf.zeros([12, 10])
    settings = Augmentation(crop_padding=4, flip=True, randaugment_ops=RANDAUGMENT_OPS,
                            randaugment_n=2, randaugment_magnitude=15.0, erasing_prob=0.5,
                            erasing_max_area=0.3)
    out, _ = aug.augment_batch(tf.constant(images), labels, SEED, settings)
    out_other, _ = aug.augment_batch(tf.constant(other), labels, SEED, settings)
    differs = [not np.array_equal(a, b) for a, b in zip(out, out_other)]
    assert differs == [i == 5 for i in range(12)]


# --- erasing and mixing -------------------------------------------------------------------------

def test_erasing_replaces_one_rectangle_within_the_area_bound():
    images = np.full((200, 32, 32, 3), 7, np.uint8)
    out = aug.random_erasing(tf.constant(images), SEED, 0.5, 0.3).numpy()
    changed = (out != images).any(axis=-1)
    erased = changed.any(axis=(1, 2))
    assert 70 < erased.sum() < 130
    for mask in changed[erased]:
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert height * width <= 0.3 * 32 * 32 * 1.15 + 2 * 32 ** 0.5
        assert mask.sum() >= 0.9 * height * width                  # a filled rectangle
        assert 0.3 / 1.6 <= height / width <= 1.6 / 0.3


def class_coded(n, classes=10, seed=0):
    """Images of one flat value per class (10 + 20 * class) and their one-hot labels."""
    labels = np.random.default_rng(seed).integers(0, classes, n)
    images = np.broadcast_to((10 + 20 * labels)[:, None, None, None], (n, 32, 32, 3))
    return images.astype(np.uint8), tf.one_hot(labels, classes)


def value_of(labels, classes=10):
    """The pixel value a soft label predicts: its class values weighted by the label."""
    return labels @ (10.0 + 20.0 * np.arange(classes))


def test_mixup_labels_sum_to_one_and_follow_the_pixel_blend():
    images, labels = class_coded(64)
    out, mixed = aug.mix_batch(tf.constant(images), labels, SEED, 0.4, 0.0)
    out, mixed = out.numpy().astype(float), mixed.numpy()
    np.testing.assert_allclose(mixed.sum(axis=1), 1, atol=1e-6)
    assert (out == out[:, :1, :1]).all()                        # blended evenly
    np.testing.assert_allclose(out[:, 0, 0, 0], value_of(mixed), atol=0.51)
    assert (mixed.max(axis=1) < 0.99).sum() > 20                 # a ratio per image
    assert np.unique(mixed.max(axis=1).round(3)).size > 20


def test_cutmix_labels_are_the_share_of_pixels_pasted():
    images, labels = class_coded(64)
    out, mixed = aug.mix_batch(tf.constant(images), labels, SEED, 0.0, 1.0)
    out, mixed = out.numpy()[..., 0], mixed.numpy()
    np.testing.assert_allclose(mixed.sum(axis=1), 1, atol=1e-6)
    for image, label in zip(out, mixed):
        values, counts = np.unique(image, return_counts=True)
        shares = np.zeros(10)
        shares[(values - 10) // 20] = counts / image.size
        np.testing.assert_allclose(label, shares, atol=1e-6)
    assert (mixed.max(axis=1) < 0.99).sum() > 20


def test_mixup_and_cutmix_together_choose_per_image_and_alpha_zero_is_off():
    images, labels = class_coded(64)
    out, mixed = aug.mix_batch(tf.constant(images), labels, SEED, 0.4, 1.0)
    out = out.numpy()[..., 0]
    coded = np.isin(out, 10 + 20 * np.arange(10)).all(axis=(1, 2))
    flat = (out == out[:, :1, :1]).all(axis=(1, 2))
    mixed_up = flat & ~coded                                     # blended to a new value
    cut = ~flat                                                  # two values, pasted
    assert mixed_up.sum() > 8 and cut.sum() > 8
    np.testing.assert_allclose(out.mean(axis=(1, 2)), value_of(mixed.numpy()), atol=0.51)
    every_step_off = Augmentation(crop_padding=0, flip=False, randaugment_n=0)
    same, labels_again = aug.augment_batch(tf.constant(images), labels, SEED, every_step_off)
    np.testing.assert_array_equal(same, images)
    np.testing.assert_array_equal(labels_again, labels)


# --- pixel ops against PIL ----------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def pixel_test_images():
    """(7, 32, 32, 3) uint8: 32x32 views of matplotlib's sample photo (Grace Hopper, 512x600):
    the whole photo resized, the face, a 2x-reduced patch, two raw 32x32 crops; then a flat
    image and a low-contrast one (a crop squeezed into grey levels 100..115)."""
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as photo:
        photo = photo.convert("RGB")
        views = [photo.resize((32, 32), Image.BILINEAR),
                 photo.crop((160, 100, 352, 292)).resize((32, 32), Image.BICUBIC),
                 photo.crop((300, 380, 364, 444)).resize((32, 32), Image.BILINEAR),
                 photo.crop((240, 200, 272, 232)), photo.crop((20, 500, 52, 532))]
        images = [np.asarray(view) for view in views]
    images.append(np.broadcast_to(np.array([90, 140, 200], np.uint8), (32, 32, 3)))
    images.append((100 + images[3] // 16).astype(np.uint8))
    return np.stack(images)


def pixel_op_batch(op, levels, raw=False):
    """Every test image at every level, in one batch with one level per image: returns the
    outputs (images, levels, 32, 32, 3) as uint8 through the app's path (or, raw, the op's
    float output in grey levels) and the input images."""
    images = pixel_test_images()
    batch = np.repeat(images, len(levels), axis=0)            # image-major
    level = tf.constant(np.tile(np.asarray(levels, np.float32), len(images)))
    out = op(aug._to_float(tf.constant(batch)), level)
    assert out.dtype == tf.float32 and 0.0 <= out.numpy().min() and out.numpy().max() <= 1.0
    out = out.numpy() * 255.0 if raw else aug._to_uint8(out).numpy()
    return out.reshape((len(images), len(levels)) + images.shape[1:]), images


def pil(function, image, *args):
    return np.asarray(function(Image.fromarray(image), *args))


def posterize_bits(level):
    return 8 - round(4 * level)


# op: (levels tried, PIL reference of (uint8 image, level) -> uint8 image)
PIXEL_OPS = {
    "autocontrast": ((0.0, 0.4, 1.0), lambda image, level: pil(
        ImageOps.autocontrast, image) if level > 0 else image),
    "equalize": ((0.0, 0.4, 1.0), lambda image, level: pil(
        ImageOps.equalize, image) if level > 0 else image),
    "posterize": ((0.0, 0.25, 0.4, 0.75, 1.0), lambda image, level: pil(
        ImageOps.posterize, image, posterize_bits(level))),           # 8, 7, 6, 5, 4 bits
    # v >= 256 (1 - level) for whole v is v >= ceil of it: thresholds 256, 192, 128, 77, 0
    "solarize": ((0.0, 0.25, 0.5, 0.7, 1.0), lambda image, level: pil(
        ImageOps.solarize, image, math.ceil(256 * (1 - level)))),
}


@pytest.mark.parametrize("name", PIXEL_OPS)
def test_pixel_op_is_pil_exactly_with_a_level_per_image(name):
    levels, reference = PIXEL_OPS[name]
    out, images = pixel_op_batch(getattr(pixel_ops, name), levels)
    for i, image in enumerate(images):
        for j, level in enumerate(levels):
            np.testing.assert_array_equal(out[i, j], reference(image, level),
                                          err_msg=f"{name} image {i} level {level}")
    # the photos change at the strongest level (a wrong op could not pass as the identity)
    assert all(not np.array_equal(out[i, -1], images[i]) for i in range(5))


def test_pixel_op_cases_pil_leaves_alone():
    images = pixel_test_images()
    flat, low = images[5], images[6]
    for op in (pixel_ops.autocontrast, pixel_ops.equalize):           # a flat channel stays
        np.testing.assert_array_equal(pixel_op_batch(op, (1.0,))[0][5, 0], flat)
    stretched = pixel_op_batch(pixel_ops.autocontrast, (1.0,))[0][6, 0]
    assert low.min() >= 100 and low.max() <= 115
    assert (stretched.min(axis=(0, 1)) == 0).all() and (stretched.max(axis=(0, 1)) == 255).all()
    # equalize: the low-contrast image spread over (nearly) the whole range too
    assert np.ptp(pixel_op_batch(pixel_ops.equalize, (1.0,))[0][6, 0]) > 200


def test_pixel_op_sharpness_is_pil_within_a_grey_level():
    """PIL blends the image with its SMOOTH filter and truncates the blend to uint8; the op
    computes the same blend and leaves it to the final rounding: at most 1 grey level apart,
    equal where the factor is whole (0, 1, 2) and on the border."""
    levels = (-1.0, -0.5, 0.0, 0.3, 0.9, 1.0)                 # factors 0, 0.5, 1, 1.3, 1.9, 2
    out, images = pixel_op_batch(pixel_ops.sharpness, levels)
    raw, _ = pixel_op_batch(pixel_ops.sharpness, levels, raw=True)
    for i, image in enumerate(images):
        smooth = pil(lambda picture: picture.filter(ImageFilter.SMOOTH), image).astype(float)
        for j, level in enumerate(levels):
            expected = np.asarray(ImageEnhance.Sharpness(Image.fromarray(image)).enhance(
                1.0 + level)).astype(int)
            difference = out[i, j].astype(int) - expected
            assert np.abs(difference).max() <= 1, (i, level)
            assert difference.min() >= 0                      # rounding vs truncation
            if level in (-1.0, 0.0, 1.0):
                np.testing.assert_array_equal(difference, 0)
            # before rounding: PIL's blend of the image and its SMOOTH image, untruncated
            blend = np.clip(smooth + (1.0 + level) * (image - smooth), 0, 255)
            np.testing.assert_allclose(raw[i, j], blend, atol=2e-3, err_msg=f"{i} {level}")
            np.testing.assert_array_equal(out[i, j, [0, -1]], image[[0, -1]])     # the border
            np.testing.assert_array_equal(out[i, j][:, [0, -1]], image[:, [0, -1]])
    # blurring and sharpening both change the photos, and in opposite directions
    edges = np.abs(np.diff(out[:5].astype(int), axis=2)).mean(axis=(0, 2, 3, 4))   # per level
    assert edges[0] < edges[1] < edges[2] < edges[3] < edges[4] < edges[5]


PIXEL_OP_LEVELS = {"autocontrast": 1.0, "equalize": 1.0, "posterize": 1.0, "solarize": 0.6,
                   "sharpness": -0.7}


@pytest.mark.parametrize("name", PIXEL_OP_LEVELS)
def test_pixel_op_level_zero_is_the_identity_bit_for_bit(name):
    """Off-grid floats (as after the colour transform) come back exactly where the level is 0,
    and the others change; shape and dtype are kept."""
    images = float_images(6, seed=3)
    level = tf.constant([0.0, PIXEL_OP_LEVELS[name]] * 3)
    out = getattr(pixel_ops, name)(images, level)
    assert out.dtype == tf.float32 and out.shape == images.shape
    assert 0.0 <= out.numpy().min() and out.numpy().max() <= 1.0
    for i in range(6):
        assert np.array_equal(out[i], images[i]) == (i % 2 == 0), i


@pytest.mark.parametrize("name", PIXEL_OP_LEVELS)
def test_pixel_op_output_depends_on_its_own_image_and_level_only(name):
    op, strength = getattr(pixel_ops, name), PIXEL_OP_LEVELS[name]
    images = aug._to_float(tf.constant(pixel_test_images()[:6]))
    level = tf.constant([strength, 0.5 * strength, strength, 0.0, strength, 0.3 * strength])
    out = op(images, level).numpy()
    # the same batch with image 2 replaced and image 4's level changed
    other = tf.tensor_scatter_nd_update(images, [[2]], 1.0 - images[2:3])
    other_level = tf.tensor_scatter_nd_update(level, [[4]], [0.0])
    changed = [not np.array_equal(a, b) for a, b in zip(out, op(other, other_level).numpy())]
    assert changed == [i in (2, 4) for i in range(6)]


@pytest.mark.parametrize("name", PIXEL_OP_LEVELS)
def test_pixel_op_is_vectorised_in_tf_data_with_unknown_batch_size(name):
    op = getattr(pixel_ops, name)

    def augment(batch):
        level = tf.fill([tf.shape(batch)[0]], PIXEL_OP_LEVELS[name])
        return aug._to_uint8(op(aug._to_float(batch), level))

    images = pixel_test_images()
    batches = list(tf.data.Dataset.from_tensor_slices(images).batch(4).map(augment))
    assert [b.shape[0] for b in batches] == [4, 3] and batches[0].dtype == tf.uint8
    whole = augment(tf.constant(images)).numpy()
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in batches]), whole)
    graph = tf.function(augment).get_concrete_function(
        tf.TensorSpec([None, 32, 32, 3], tf.uint8)).graph
    kinds = {op.type for op in graph.get_operations()}
    assert not {"While", "StatelessWhile", "If", "StatelessIf", "MapDataset"} & kinds
