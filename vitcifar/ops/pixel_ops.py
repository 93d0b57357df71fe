"""The pixel operations of AutoAugment and RandAugment on float image batches, computed as PIL
computes them on the uint8 image, in core TensorFlow ops (data_augmentations.apply_ops runs
them between colour and geometry)."""
from __future__ import annotations

import tensorflow as tf


def per_image(values, rank: int):
    """A scalar, or (B,) values reshaped to (B, 1, ...) of `rank` dims, to broadcast."""
    values = tf.convert_to_tensor(values, tf.float32)
    if values.shape.rank == 0:
        return values
    return tf.reshape(values, [-1] + [1] * (rank - 1))


# The PIL operations of AutoAugment and RandAugment (Cubuk et al., "AutoAugment", CVPR 2019;
# Cubuk et al., "RandAugment", CVPR workshops 2020): AutoAugment's CIFAR-10 policy and
# RandAugment's op list both use all five. AutoAugment's ranges: AutoContrast and Equalize
# have no magnitude, Posterize keeps 4..8 bits, Solarize's threshold is 0..256, Sharpness's
# factor 0.1..1.9. Each is op(images, level) on
# float32 (B, H, W, 3) in [0, 1] (as inside apply_ops, after _to_float) with level a (B,)
# float32 tensor, one per image, and returns float32 (B, H, W, 3) in [0, 1]. They compute, on
# the image rounded to 0..255, exactly what PIL computes on that uint8 image, with these level
# mappings (the change grows with |level|; 0 is the identity):
#   autocontrast  level > 0: PIL.ImageOps.autocontrast; level <= 0: unchanged
#   equalize      level > 0: PIL.ImageOps.equalize; level <= 0: unchanged
#   posterize     bits = 8 - round(4 * level) for level in [0, 1] (round half to even, as
#                 Python's round): 0 -> 8 bits (unchanged), 1 -> 4 bits
#   solarize      threshold = 256 * (1 - level) grey levels for level in [0, 1]: pixels at or
#                 above it are inverted: 0 -> none, 0.5 -> those >= 128, 1 -> all
#   sharpness     factor = 1 + level for level in [-1, 1]: 0 unchanged, > 0 sharper (1 -> 2),
#                 < 0 blurred (-1 -> PIL's SMOOTH filter); AutoAugment's 0.1..1.9 is |level|
#                 up to 0.9. PIL truncates the blend to uint8, this one leaves it to the
#                 caller's single rounding, so the two differ by at most 1 grey level.
# An image whose level is 0 comes back bit for bit as it went in (levels outside the ranges
# are clipped into them). Everything is per image and channel, done for the whole batch at once.

def _grey_levels(images):
    """Float images in [0, 1] -> float32 0..255, rounded to whole grey levels, as the uint8
    image PIL would see."""
    return tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0)


def _unless_zero(level, applied, images):
    """`applied` where an image's level is nonzero, `images` itself (bit for bit) elsewhere;
    applied is in grey levels 0..255."""
    return tf.where(per_image(level, 4) != 0.0, applied / 255.0, images)


def autocontrast(images, level):
    """PIL.ImageOps.autocontrast where level > 0: each channel of each image stretched so that
    its darkest value becomes 0 and its brightest 255 (a flat channel stays as it is)."""
    levels = tf.cast(_grey_levels(images), tf.float64)          # PIL's lut is in doubles
    low = tf.reduce_min(levels, axis=[1, 2], keepdims=True)     # (B, 1, 1, 3)
    high = tf.reduce_max(levels, axis=[1, 2], keepdims=True)
    flat = high <= low
    scale = 255.0 / tf.where(flat, tf.ones_like(low), high - low)
    # PIL: lut[i] = int(i * scale + offset), offset = -low * scale, clipped to 0..255
    stretched = tf.clip_by_value(tf.floor(levels * scale + (-low * scale)), 0.0, 255.0)
    out = tf.cast(tf.where(flat, levels, stretched), tf.float32)
    return _unless_zero(tf.maximum(level, 0.0), out, images)


def equalize(images, level):
    """PIL.ImageOps.equalize where level > 0: each channel of each image through its own
    histogram-equalising table. With h the channel's 256-bin histogram and step =
    (sum(h) - h[its brightest value]) // 255, value i becomes (step // 2 + sum(h[:i])) // step,
    at most 255; a channel with step 0 (e.g. flat) stays as it is."""
    batch, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    levels = tf.cast(_grey_levels(images), tf.int32)             # (B, H, W, 3)
    # one histogram per (image, channel): bin (3 b + c) * 256 + value
    channel = tf.range(batch * 3, dtype=tf.int32)
    bins = tf.reshape(channel, [batch, 1, 1, 3]) * 256 + levels
    num_bins = batch * 3 * 256
    hist = tf.reshape(tf.math.bincount(tf.reshape(bins, [-1]), minlength=num_bins,
                                       maxlength=num_bins), [batch, 3, 256])
    values = tf.range(256, dtype=tf.int32)
    brightest = tf.reduce_max(tf.where(hist > 0, values, -1), axis=-1, keepdims=True)
    at_brightest = tf.reduce_sum(tf.where(values == brightest, hist, 0), axis=-1,
                                 keepdims=True)                  # (B, 3, 1)
    step = (height * width - at_brightest) // 255
    below = tf.cumsum(hist, axis=-1, exclusive=True)             # sum(h[:i]), (B, 3, 256)
    table = tf.minimum((step // 2 + below) // tf.maximum(step, 1), 255)
    table = tf.where(step > 0, table, values)
    out = tf.gather(tf.reshape(table, [-1]), bins)              # (B, H, W, 3)
    return _unless_zero(tf.maximum(level, 0.0), tf.cast(out, tf.float32), images)


def posterize(images, level):
    """PIL.ImageOps.posterize(image, bits) with bits = 8 - round(4 * level), level in [0, 1]:
    the lowest 8 - bits bits of every value set to 0."""
    dropped = tf.round(4.0 * tf.clip_by_value(level, 0.0, 1.0))  # low bits cleared, 0..4
    unit = per_image(tf.pow(2.0, dropped), 4)                   # exact powers of two
    out = tf.floor(_grey_levels(images) / unit) * unit
    return _unless_zero(level, out, images)


def solarize(images, level):
    """PIL.ImageOps.solarize(image, threshold) with threshold = 256 * (1 - level) grey levels,
    level in [0, 1]: every value v >= threshold becomes 255 - v."""
    threshold = per_image(256.0 * (1.0 - tf.clip_by_value(level, 0.0, 1.0)), 4)
    levels = _grey_levels(images)
    return _unless_zero(level, tf.where(levels >= threshold, 255.0 - levels, levels), images)


def sharpness(images, level):
    """PIL.ImageEnhance.Sharpness(image).enhance(1 + level), level in [-1, 1]: a blend of the
    image with PIL's SMOOTH filter of it (3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13,
    rounded to whole grey levels as PIL does, the one-pixel border left as it is):
    smooth + (1 + level) * (image - smooth), clipped. -1 gives the smoothed image, 1 pushes
    each pixel as far again from it. Not rounded (PIL truncates): see the section comment."""
    factor = 1.0 + tf.clip_by_value(level, -1.0, 1.0)
    levels = _grey_levels(images)                               # (B, H, W, 3)
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]])
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])      # (3, 3, channels 3, 1)
    # integer sums up to 13 * 255: exact in float32
    sums = tf.nn.depthwise_conv2d(levels, kernel, [1, 1, 1, 1], "VALID")    # (B, H-2, W-2, 3)
    smooth = tf.pad(tf.round(sums / 13.0), [[0, 0], [1, 1], [1, 1], [0, 0]])
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    inside = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)    # (H, W)
    smooth = tf.where(inside[None, :, :, None], smooth, levels)
    out = tf.clip_by_value(smooth + per_image(factor, 4) * (levels - smooth), 0.0, 255.0)
    return _unless_zero(level, out, images)


# The pixel ops by RandAugment name (their level mappings are in each function's docstring).
PIXEL_OPS = {"autocontrast": autocontrast, "equalize": equalize, "posterize": posterize,
             "solarize": solarize, "sharpness": sharpness}
