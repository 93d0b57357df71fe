"""Batch augmentations for uint8 CIFAR images, drawn per image, in core TensorFlow ops.

Every op takes a whole batch (B, H, W, C) and a stateless seed (a shape-[2] int tensor), so
the same seed gives the same output on TF 2.10 and current TF, and each image in a batch
gets its own random parameters. They run inside tf.data (on the CPU), after batching, with
no per-image Python loop or tf.map_fn. Shape, dtype and value range are kept: uint8 in,
uint8 out (float32 in [0, 1] in between, rounded once). A magnitude of 0 is the identity.

Speed comes from doing each kind of work once per batch, however many ops an image got:
  colour    hue, saturation, brightness and contrast are linear in RGB, so together they
            are one affine map per image: a batched 3x3 matmul (tf.image's HSV round trip
            costs as much as all the geometry)
  geometry  crop, flips, rotation, shear, zoom and translation are one 3x3 sampling matrix
            per image, applied by a single ImageProjectiveTransformV3 call (bilinear, black
            outside the image, as the zero-padded crop); this call is most of the cost
`rand_augment` picks N ops per image and gives the others a bound of 0; `augment_batch` is
the training augmentation (crop, flips, RandAugment in that one pass, then erasing, mixing);
`mix_batch` (mixup, cutmix) mixes images and their one-hot labels. The pixel ops (in
vitcifar/ops/pixel_ops.py)
(autocontrast, equalize, posterize, solarize, sharpness: PIL's, on float images with a level
per image) run in apply_ops between colour and geometry, each on the whole batch.

Preview, on real training images (each row: an original, then augmented versions):

    python preview_augmentations.py out.png [--data-dir DIR] [--dataset cifar10]
                                    [any training flag, e.g. --randaugment-magnitude 15]
"""
from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence, Union

import tensorflow as tf

from vitcifar.config.settings import (MAX_MAGNITUDE, RANDAUGMENT_OPS, RANDAUGMENT_STRENGTH,
                                      Augmentation)
from vitcifar.ops.pixel_ops import PIXEL_OPS, per_image

# A bound is one number for the whole batch or a (B,) tensor, one per image.
Bound = Union[float, tf.Tensor]

COLOR_OPS = ("hue", "saturation", "brightness", "contrast")    # the rest are geometry
ERASING_ASPECT = 0.3     # erased rectangles have height/width in [0.3, 1/0.3] (Zhong et al.)
LUMA = (0.2989, 0.5870, 0.1140)    # grey = LUMA . RGB, as tf.image.rgb_to_grayscale
# Random draws of apply_ops, one stream per name, so that an op's parameters depend on the
# seed and the op only, not on which other ops are asked for.
_STREAMS = ("crop", "flip", "vertical_flip") + RANDAUGMENT_OPS


def _split(seed, num: int):
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))


def _to_float(images):
    return tf.cast(images, tf.float32) / 255.0


def _to_uint8(images):
    return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.uint8)


# --- geometry: sampling matrices -----------------------------------------------------------
# Coordinates are (x right, y down) in pixels from the image centre. A sampling matrix maps
# an output pixel to the input point it samples, i.e. it is the inverse of what happens to
# the picture; so for changes applied to the picture in the order A then B, the combined
# sampling matrix is sampling(A) @ sampling(B). Arguments are (B,) tensors, one per image.

def _affine(a, b, c, d, e, f):
    """(B, 3, 3) matrices sending (x, y) to (a x + b y + c, d x + e y + f); args (B,)."""
    zeros = tf.zeros_like(a)
    return tf.reshape(tf.stack([a, b, c, d, e, f, zeros, zeros, zeros + 1.0], axis=-1),
                      [-1, 3, 3])


def rotation_matrix(degrees):
    """Turns each picture counter-clockwise as displayed (90 degrees is np.rot90)."""
    angle = tf.convert_to_tensor(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin, zeros = tf.cos(angle), tf.sin(angle), tf.zeros_like(angle)
    return _affine(cos, -sin, zeros, sin, cos, zeros)


def shear_matrix(shear_x, shear_y):
    """A horizontal shear (row y moves right by shear_x * y pixels), then a vertical one
    (column x moves down by shear_y * x pixels)."""
    sx, sy = tf.convert_to_tensor(shear_x, tf.float32), tf.convert_to_tensor(shear_y, tf.float32)
    zeros = tf.zeros_like(sx)
    return _affine(1.0 + sx * sy, -sx, zeros, -sy, zeros + 1.0, zeros)


def scale_matrix(scale_x, scale_y):
    """Stretches each picture by scale_x horizontally and scale_y vertically about its
    centre: equal scales > 1 zoom in, < 1 out; -1 mirrors."""
    sx, sy = tf.convert_to_tensor(scale_x, tf.float32), tf.convert_to_tensor(scale_y, tf.float32)
    zeros = tf.zeros_like(sx)
    return _affine(1.0 / sx, zeros, zeros, zeros, 1.0 / sy, zeros)


def translation_matrix(dx, dy):
    """Moves each picture right by dx and down by dy pixels."""
    dx, dy = tf.convert_to_tensor(dx, tf.float32), tf.convert_to_tensor(dy, tf.float32)
    zeros = tf.zeros_like(dx)
    return _affine(zeros + 1.0, zeros, -dx, zeros, zeros + 1.0, -dy)


def projective_transform(images, sampling):
    """Float images (B, H, W, C), sampling matrices (B, 3, 3) -> transformed images, by one
    ImageProjectiveTransformV3 call for the batch: bilinear, zero (black) outside the input,
    so integer shifts and mirrors copy pixels exactly."""
    height, width = images.shape[1], images.shape[2]
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    to_centre = tf.constant([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    from_centre = tf.constant([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
    pixels = tf.matmul(from_centre, tf.matmul(sampling, to_centre))    # (B, 3, 3)
    # The op wants [a0..a7] with (x, y) -> ((a0 x + a1 y + a2) / k, (a3 x + a4 y + a5) / k),
    # k = a6 x + a7 y + 1: the matrix row-major, divided by its last entry, minus that entry.
    flat = tf.reshape(pixels / pixels[:, 2:, 2:], [-1, 9])[:, :8]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=flat, output_shape=tf.constant([height, width]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")


# --- colour: one affine map per image -----------------------------------------------------

def hue_matrix(turns):
    """(B,) -> (B, 3, 3) rotations of RGB space about its grey axis by `turns` of a full
    circle (column vectors): grey stays grey, 1/3 turn sends red to green, green to blue,
    blue to red, exactly as tf.image.adjust_hue by 1/3."""
    angle = tf.convert_to_tensor(turns, tf.float32) * (2.0 * math.pi)
    cos, sin = per_image(tf.cos(angle), 3), per_image(tf.sin(angle), 3)
    cross = tf.constant([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)
    return cos * tf.eye(3) + (1.0 - cos) / 3.0 * tf.ones([3, 3]) + sin * cross


def saturation_matrix(factor):
    """(B,) -> (B, 3, 3) blends with each pixel's grey (LUMA . RGB): 0 makes the image grey
    (tf.image.rgb_to_grayscale), 1 keeps it, 2 doubles every colour's distance from grey."""
    factor = per_image(factor, 3)
    return factor * tf.eye(3) + (1.0 - factor) * tf.constant([LUMA] * 3)


def color_transform(images, hue, saturation, brightness, contrast):
    """Float RGB images (B, H, W, 3) in [0, 1] with per-image (B,) parameters, in this order:
    hue (turns, see hue_matrix), saturation (factor, see saturation_matrix), brightness (added,
    as tf.image.adjust_brightness), contrast (each channel's distance from its image mean
    scaled, as tf.image.adjust_contrast). All four are linear in RGB, so they are one affine
    map per image (a batched 3x3 matmul) and the result is clipped to [0, 1] once, at the end.
    Identity: hue 0, saturation 1, brightness 0, contrast 1."""
    contrast = per_image(contrast, 3)
    matrix = tf.matmul(saturation_matrix(saturation), hue_matrix(hue))       # (B, 3, 3)
    mean = tf.reduce_mean(images, axis=[1, 2])[:, None]                      # (B, 1, 3)
    # contrast after the others: out = c * (x M' + b) + (1 - c) * (mean M' + b)
    offset = (1.0 - contrast) * tf.matmul(mean, matrix, transpose_b=True) + per_image(
        brightness, 3)
    pixels = tf.reshape(images, [tf.shape(images)[0], -1, 3])
    mapped = tf.matmul(pixels, matrix * contrast, transpose_b=True) + offset
    return tf.clip_by_value(tf.reshape(mapped, tf.shape(images)), 0.0, 1.0)


# --- all per-image ops in one pass ----------------------------------------------------------

def apply_ops(images, seed, bounds: Mapping[str, Bound], crop_padding: int = 0,
              flip: bool = False, vertical_flip: bool = False):
    """uint8 (B, H, W, 3) -> uint8: each op named in `bounds` (from RANDAUGMENT_OPS) applied to
    every image with its own parameter, drawn uniformly within +-bound (a scalar or (B,) per
    image; 0 leaves an image as it is), plus a random crop after zero-padding by crop_padding
    and random mirroring. Colour first (one affine map per image), then geometry in the order
    crop, flips, zoom, shear, rotation, translation, composed into one sampling matrix per
    image and applied by one transform; rounded to uint8 once. The pixel ops (PIXEL_OPS) come
    between colour and geometry, each on the whole batch with a level per image (|draw|;
    sharpness keeps the sign: negative blurs)."""
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]

    def uniform(name, shape, low=-1.0, high=1.0, dtype=tf.float32):
        stream = tf.random.experimental.stateless_fold_in(seed, _STREAMS.index(name))
        return tf.random.stateless_uniform(shape, stream, low, high, dtype=dtype)

    draws = {op: uniform(op, [batch, 2]) * per_image(bound, 2)     # (B, 2): up to 2 per op
             for op, bound in bounds.items()}
    zeros = tf.zeros([batch])

    def drawn(op, index=0):
        return draws[op][:, index] if op in draws else zeros

    def mirror(name):
        return tf.where(uniform(name, [batch], 0.0, 1.0) < 0.5, -1.0, 1.0)

    sampling = []
    if crop_padding:
        shift = crop_padding - tf.cast(
            uniform("crop", [batch, 2], 0, 2 * crop_padding + 1, tf.int32), tf.float32)
        sampling.append(translation_matrix(shift[:, 0], shift[:, 1]))
    if flip:
        sampling.append(scale_matrix(mirror("flip"), zeros + 1.0))
    if vertical_flip:
        sampling.append(scale_matrix(zeros + 1.0, mirror("vertical_flip")))
    if "zoom" in draws:
        sampling.append(scale_matrix(1.0 + drawn("zoom"), 1.0 + drawn("zoom")))
    if "shear" in draws:
        sampling.append(shear_matrix(drawn("shear"), drawn("shear", 1)))
    if "rotation" in draws:
        sampling.append(rotation_matrix(drawn("rotation")))
    if "translation" in draws:
        sampling.append(translation_matrix(drawn("translation") * width,
                                           drawn("translation", 1) * height))
    recolour = bool(set(draws) & set(COLOR_OPS))
    pixel_ops = [op for op in PIXEL_OPS if op in draws]
    if not (recolour or pixel_ops or sampling):
        return images
    x = _to_float(images)
    if recolour:
        x = color_transform(x, drawn("hue"), 1.0 + drawn("saturation"), drawn("brightness"),
                            1.0 + drawn("contrast"))
    for op in pixel_ops:           # before the geometry: no black border in their histograms
        level = drawn(op) if op == "sharpness" else tf.abs(drawn(op))
        x = PIXEL_OPS[op](x, level)
    if sampling:
        x = projective_transform(x, functools.reduce(tf.matmul, sampling))
    return _to_uint8(x)


# --- RandAugment ------------------------------------------------------------------------------

def choose_ops(seed, batch, num_ops: int, n: int, prob: float):
    """(B, num_ops) float 0/1 masks: n distinct ops per image, each then kept with
    probability prob."""
    pick_seed, keep_seed = _split(seed, 2)
    top = tf.math.top_k(tf.random.stateless_uniform([batch, num_ops], pick_seed), k=n).indices
    picked = tf.reduce_sum(tf.one_hot(top, num_ops), axis=1)
    kept = tf.random.stateless_uniform([batch, num_ops], keep_seed) < prob
    return picked * tf.cast(kept, tf.float32)


def policy_bounds(seed, batch, ops: Sequence[str], n: int, magnitude: float,
                  prob: float) -> dict:
    """RandAugment's per-image bounds for apply_ops: for each of `ops`, its strength scaled
    by magnitude / MAX_MAGNITUDE for the images that got the op (n distinct ops per image,
    each kept with probability prob), 0 for the rest; (B,) each."""
    chosen = choose_ops(seed, batch, len(ops), n, prob)
    level = magnitude / MAX_MAGNITUDE
    return {op: RANDAUGMENT_STRENGTH[op] * level * chosen[:, k] for k, op in enumerate(ops)}


def rand_augment(images, seed, ops: Sequence[str], n: int, magnitude: float, prob: float):
    """RandAugment, vectorised: each image gets n distinct ops of `ops`, chosen for it, each
    applied with probability prob. magnitude (0..MAX_MAGNITUDE) scales every op's
    RANDAUGMENT_STRENGTH bound; within it each image draws its own parameter (magnitude sets the
    strongest change, like timm's magnitude sampling; 0 is the identity). The ops an image
    did not get have bound 0 for it, so one apply_ops pass serves the whole batch."""
    choice_seed, op_seed = _split(seed, 2)
    return apply_ops(images, op_seed, policy_bounds(choice_seed, tf.shape(images)[0], ops, n,
                                                    magnitude, prob))


# --- erasing and mixing -----------------------------------------------------------------------

def _boxes(top, left, box_height, box_width, height: int, width: int):
    """(B, H, W, 1) bool: inside each image's box; args (B,) float pixel counts."""
    rows = tf.range(height, dtype=tf.float32)[None]
    cols = tf.range(width, dtype=tf.float32)[None]
    inside_rows = (rows >= top[:, None]) & (rows < (top + box_height)[:, None])    # (B, H)
    inside_cols = (cols >= left[:, None]) & (cols < (left + box_width)[:, None])   # (B, W)
    return (inside_rows[:, :, None] & inside_cols[:, None, :])[..., None]


def random_erasing(images, seed, prob: float, max_area: float):
    """Random erasing (cutout with noise, Zhong et al. 2017): with probability prob, a
    rectangle of each image is replaced by uniform noise. Its area is uniform in
    [0, max_area] of the image, its height/width ratio log-uniform in [0.3, 1/0.3], its
    place uniform within the image. prob or max_area 0 is the identity."""
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    draw_seed, noise_seed = _split(seed, 2)
    u = tf.unstack(tf.random.stateless_uniform([5, batch], draw_seed))
    area = u[0] * max_area * height * width
    aspect = tf.exp((2.0 * u[1] - 1.0) * math.log(1.0 / ERASING_ASPECT))
    erase = tf.cast(u[2] < prob, tf.float32)
    box_height = tf.minimum(tf.round(tf.sqrt(area * aspect)), height) * erase
    box_width = tf.minimum(tf.round(tf.sqrt(area / aspect)), width) * erase
    top = tf.floor(u[3] * (height - box_height + 1))
    left = tf.floor(u[4] * (width - box_width + 1))
    noise = tf.random.stateless_uniform(tf.shape(images), noise_seed, 0, 256, dtype=tf.int32)
    return tf.where(_boxes(top, left, box_height, box_width, height, width),
                    tf.cast(noise, images.dtype), images)


def _beta(seed, batch, alpha: float):
    """(B,) draws from Beta(alpha, alpha), as a ratio of two stateless gamma draws."""
    gammas = tf.random.stateless_gamma([2, batch], seed, alpha=alpha)
    return gammas[0] / tf.maximum(gammas[0] + gammas[1], 1e-12)


def mix_batch(images, labels, seed, mixup_alpha: float, cutmix_alpha: float):
    """Mixup and cutmix, per image: uint8 images (B, H, W, C) and float labels (B, classes)
    (one-hot or already soft) -> the same, mixed. Each image is paired with another of the
    batch (a random permutation) and keeps a share lam ~ Beta(alpha, alpha) of itself:
    mixup blends the pixels lam : 1 - lam; cutmix pastes a box of the partner covering about
    1 - lam of the image, lam then being the exact share of pixels kept. Labels become
    lam * own + (1 - lam) * partner's. With both alphas > 0 each image gets one of the two
    with probability 1/2; an alpha of 0 turns that one off."""
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    pair_seed, mixup_seed, cutmix_seed, box_seed, which_seed = _split(seed, 5)
    partner = tf.argsort(tf.random.stateless_uniform([batch], pair_seed))
    blend = tf.ones([batch])                 # share of own pixel values where not pasted
    pasted = tf.zeros([batch, height, width, 1], tf.bool)
    if mixup_alpha > 0:
        blend = _beta(mixup_seed, batch, mixup_alpha)
    if cutmix_alpha > 0:
        side = tf.sqrt(1.0 - _beta(cutmix_seed, batch, cutmix_alpha))   # box side / image side
        centre = tf.random.stateless_uniform([2, batch], box_seed)
        box_height, box_width = tf.round(side * height), tf.round(side * width)
        top = tf.clip_by_value(tf.round(centre[0] * height - box_height / 2), 0, height)
        left = tf.clip_by_value(tf.round(centre[1] * width - box_width / 2), 0, width)
        bottom = tf.minimum(top + box_height, height)
        right = tf.minimum(left + box_width, width)
        pasted = _boxes(top, left, bottom - top, right - left, height, width)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = tf.random.stateless_uniform([batch], which_seed) < 0.5
        blend = tf.where(use_cutmix, 1.0, blend)
        pasted = pasted & use_cutmix[:, None, None, None]
    own, other = _to_float(images), _to_float(tf.gather(images, partner))
    weight = per_image(blend, 4)
    mixed = tf.where(pasted, other, weight * own + (1.0 - weight) * other)
    kept = blend * (1.0 - tf.reduce_mean(tf.cast(pasted, tf.float32), axis=[1, 2, 3]))
    labels = kept[:, None] * labels + (1.0 - kept[:, None]) * tf.gather(labels, partner)
    return _to_uint8(mixed), labels


# --- the training augmentation ----------------------------------------------------------------

def augment_batch(images, labels, seed, augmentation: Augmentation):
    """The training augmentation of one batch, as `augmentation` sets it: random crop, flips
    and RandAugment in one apply_ops pass, then random erasing, then mixup/cutmix. Labels
    pass through unless mixing is on, which needs them one-hot float (B, classes) and
    returns them soft."""
    a = augmentation
    choice_seed, ops_seed, erasing_seed, mix_seed = _split(seed, 4)
    bounds = policy_bounds(choice_seed, tf.shape(images)[0], a.randaugment_ops, a.randaugment_n,
                           a.randaugment_magnitude, a.randaugment_prob) if a.randaugment_n else {}
    images = apply_ops(images, ops_seed, bounds, a.crop_padding, a.flip, a.vertical_flip)
    if a.erasing_prob:
        images = random_erasing(images, erasing_seed, a.erasing_prob, a.erasing_max_area)
    if a.mixes:
        images, labels = mix_batch(images, labels, mix_seed, a.mixup_alpha, a.cutmix_alpha)
    return images, labels
