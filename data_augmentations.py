"""Batch augmentations for uint8 CIFAR images, drawn per image, in core TensorFlow ops.

Every op takes a whole batch (B, H, W, C) and a stateless seed (a shape-[2] int tensor), so
the same seed gives the same output on TF 2.10 and current TF, and each image in a batch
gets its own random parameters. They run inside tf.data (on the CPU), after batching.
Shape, dtype and value range are kept: uint8 in, uint8 out.
"""
from __future__ import annotations

import tensorflow as tf


def random_flip(images, seed, horizontal: bool = True):
    """Mirror each image with probability 1/2 (left-right, or up-down if not horizontal)."""
    flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5
    mirrored = tf.reverse(images, axis=[2 if horizontal else 1])
    return tf.where(flip[:, None, None, None], mirrored, images)


def random_crop(images, seed, padding: int = 4):
    """Zero-pad by `padding` pixels per side, then crop back at a random offset per image
    (a shift of up to +-padding pixels in each direction). padding=0 is the identity."""
    if padding == 0:
        return images
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    offsets = tf.random.stateless_uniform([batch, 2], seed, minval=0, maxval=2 * padding + 1,
                                          dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None]                       # (B, H)
    cols = offsets[:, 1:] + tf.range(width)[None]                        # (B, W)
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)              # (B, H, W+2p, C)
    return tf.gather(cropped, cols, axis=2, batch_dims=1)                # (B, H, W, C)


def augment_batch(images, seed, flip: bool = True, crop_padding: int = 4):
    """The training augmentation: random crop with padding, then horizontal flip."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    images = random_crop(images, crop_seed, crop_padding)
    if flip:
        images = random_flip(images, flip_seed)
    return images
